"""Weaviate: a 3-node replicated cluster (RF=3, QUORUM) beside a single node, healthy and with one node down.

Both run on this machine from the pinned server (``WeaviateCluster`` and ``WeaviateServer``, free loopback ports,
temporary data). For each scale (SciFact's 5,183 documents; 100,000 with ``--synthetic``), with synthetic unit
384-d vectors (seed 0) and the short text of each document:

- ingest throughput (documents/s): ``WeaviateStore.upsert`` in chunks of 5,000 into a fresh collection, embeddings
  given; single node, then the cluster (the store knows all three nodes);
- query latency, vector -> top-10 records through ``WeaviateStore.vector_search``: the two alternate query by
  query (random unit vectors, seed 1), so both see the same machine load;
- one node down: node3 is killed (SIGKILL) and declared dead; ingest into another fresh RF=3 collection and the
  same queries against the first one (at QUORUM, the two live copies answer); node3 is restarted afterwards.

Every node of the cluster shares the machine's cores with the others and with this client: on one machine the
cluster measures the cost of replication (three copies written, two answering each read), not a speed-up.
With ``--breakdown`` (single node only), text -> top-10 at SciFact scale (the 5,183 SciFact texts, random vectors
stamped with our encoder's space, the 300 test questions) is split into its parts, every variant alternating
query by query in one process: our retriever end to end; weaviate-haystack with Haystack's
SentenceTransformersTextEmbedder (the peers benchmark's ``stock-weaviate``) and with our text embedder (the
Weaviate benchmark's direct path); each query encoder alone; each store's top-10 call alone (our Haystack
adapter, our core store, weaviate-haystack's retriever).
Run: .venv/bin/python benchmarks/weaviate_cluster.py [--synthetic 100000] [--queries 300] [--breakdown]
(results: results/weaviate_cluster.json)
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, summary, unit_vectors, write_result
from dual_encoder_weaviate.collection import CollectionSettings
from dual_encoder_weaviate.server import WeaviateCluster, WeaviateServer
from dual_encoder_weaviate.store import WeaviateStore

from dual_encoder.stores import StoredRecord

DIMENSION = 384
CHUNK = 5000
REPLICATED = CollectionSettings(replication_factor=3)


def make_records(count: int) -> list[StoredRecord]:
    vectors = unit_vectors(count, DIMENSION, seed=0)
    return [
        StoredRecord(id=f"s{i}", content=f"synthetic document {i}", meta={"n": i}, embedding=vectors[i])
        for i in range(count)
    ]


def single_store(server: WeaviateServer, name: str) -> WeaviateStore:
    return WeaviateStore(url=server.url, grpc_port=server.ports.grpc, collection=name, timeout=30)


def cluster_store(cluster: WeaviateCluster, name: str) -> WeaviateStore:
    return WeaviateStore(
        url=",".join(cluster.urls),
        grpc_port=cluster.grpc_ports,
        collection=name,
        timeout=30,
        consistency_level="QUORUM",
        settings=REPLICATED,
    )


def ingest(store: WeaviateStore, records: list[StoredRecord]) -> float:
    store.count()  # connect and create the collection outside the timing
    started = time.perf_counter()
    for start in range(0, len(records), CHUNK):
        store.upsert(records[start : start + CHUNK])
    elapsed = time.perf_counter() - started
    assert store.count() == len(records), "not every document was written"
    return round(len(records) / elapsed, 1)


def alternate(stores: dict[str, WeaviateStore], queries: np.ndarray) -> dict[str, dict]:
    """Every store answers each query once, in an order rotated query by query; ms per call."""
    names = list(stores)
    for query in queries[:10]:  # warm connections and caches
        for store in stores.values():
            store.vector_search(query, top_k=10)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for position, query in enumerate(queries):
        shift = position % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            hits = stores[name].vector_search(query, top_k=10).hits
            samples[name].append((time.perf_counter() - started) * 1000)
            assert len(hits) == 10
    return {name: summary(values) for name, values in samples.items()}


def wait_until_gone(cluster: WeaviateCluster, name: str, timeout: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        health = cluster.health()
        if health and name not in health:
            return round(time.monotonic() - started, 1)
        time.sleep(0.25)
    raise SystemExit(f"{name} was not declared dead within {timeout} s")


def run_scale(
    label: str, count: int, server: WeaviateServer, cluster: WeaviateCluster, queries: np.ndarray, log
) -> dict:
    records = make_records(count)
    single, replicated = single_store(server, f"{label}Single"), cluster_store(cluster, f"{label}Cluster")
    result: dict = {"documents": count}
    log(f"{label}: ingest single node")
    single_rate = ingest(single, records)
    log(f"{label}: ingest cluster")
    cluster_rate = ingest(replicated, records)
    result["healthy"] = {
        "ingest_docs_per_s": {"single_node": single_rate, "cluster_rf3_quorum": cluster_rate},
        "query_vector_to_top10": dict(
            zip(
                ("single_node", "cluster_rf3_quorum"),
                alternate({"single": single, "cluster": replicated}, queries).values(),
            )
        ),
    }
    log(f"{label}: one node down")
    cluster.kill("node3")
    declared_dead_s = wait_until_gone(cluster, "node3")
    try:
        degraded = cluster_store(cluster, f"{label}Degraded")
        degraded_rate = ingest(degraded, records)
        degraded.close()
        latency = alternate({"single": single, "cluster": replicated}, queries)
    finally:
        cluster.restart("node3")
        cluster.wait_healthy(timeout=180)
    result["one_node_down"] = {
        "node_declared_dead_after_s": declared_dead_s,
        "ingest_docs_per_s": {"single_node": single_rate, "cluster_rf3_quorum_2_of_3_nodes": degraded_rate},
        "query_vector_to_top10": {
            "single_node": latency["single"],
            "cluster_rf3_quorum_2_of_3_nodes": latency["cluster"],
        },
    }
    single.close(), replicated.close()
    return result


def stock_text_embedder():
    """Haystack's SentenceTransformersTextEmbedder (the peers benchmark's stock query encoder) when installed,
    else the same call it makes (``SentenceTransformer.encode`` of one text), with a label saying which."""
    from dual_encoder.models import resolve_model_location

    try:
        from haystack_integrations.components.embedders.sentence_transformers import SentenceTransformersTextEmbedder
    except ImportError:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(resolve_model_location("all-MiniLM-L6-v2"), device="cpu")

        class Plain:
            def run(self, text: str) -> dict:
                return {"embedding": model.encode([text], show_progress_bar=False)[0].tolist()}

        return Plain(), "SentenceTransformer.encode"
    embedder = SentenceTransformersTextEmbedder(
        model=resolve_model_location("all-MiniLM-L6-v2"), local_files_only=True, progress_bar=False
    )
    embedder.warm_up()
    return embedder, "SentenceTransformersTextEmbedder"


def breakdown(server: WeaviateServer, log, rounds: int = 2) -> dict:
    """Text -> top-10 at SciFact scale, split into query encoding and the store call, for ours and the peers."""
    from haystack import Document
    from haystack.document_stores.types import DuplicatePolicy
    from haystack_integrations.components.embedders.dual_encoder import DualEncoderTextEmbedder
    from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
    from haystack_integrations.components.retrievers.weaviate import WeaviateEmbeddingRetriever
    from peers import load_scifact
    from weaviate_ingest_query import direct_store, ours_store

    from dual_encoder.encoder import DualEncoder
    from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY

    data, corpus = load_scifact()
    queries = list(data.queries.values())
    space = DualEncoder({"model": "all-MiniLM-L6-v2"}).fingerprint.document_space
    vectors = unit_vectors(len(corpus.ids), DIMENSION, seed=0)
    ours, direct = ours_store(server, "BreakdownOurs"), direct_store(server, "BreakdownDirect")
    for store, meta in ((ours, {DOCUMENT_SPACE_META_KEY: space}), (direct, {})):
        store.write_documents(
            [
                Document(id=i, content=t, meta=dict(meta, title=h), embedding=v.tolist())
                for i, t, h, v in zip(corpus.ids, corpus.texts, corpus.titles, vectors)
            ],
            policy=DuplicatePolicy.OVERWRITE,
        )
    log("breakdown: collections written")
    our_retriever = DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=ours), top_k=10)
    our_retriever.warm_up()
    our_text = DualEncoderTextEmbedder()
    our_text.warm_up()
    stock_text, stock_label = stock_text_embedder()
    direct_retriever = WeaviateEmbeddingRetriever(document_store=direct, top_k=10)
    query_vectors = {q: our_text.run(text=q)["embedding"] for q in queries}
    variants = {
        "ours_text_to_top10": lambda q: our_retriever.run(query=q),
        f"stock_weaviate_text_to_top10 ({stock_label})": lambda q: direct_retriever.run(
            query_embedding=stock_text.run(text=q)["embedding"]
        ),
        "direct_weaviate_text_to_top10 (our text embedder)": lambda q: direct_retriever.run(
            query_embedding=our_text.run(text=q)["embedding"]
        ),
        "encode_only_ours": lambda q: our_text.run(text=q),
        f"encode_only_{stock_label}": lambda q: stock_text.run(text=q),
        "store_only_ours_haystack_adapter": lambda q: ours.embedding_retrieval(query_vectors[q], top_k=10),
        "store_only_ours_core_store": lambda q: ours.store.vector_search(np.asarray(query_vectors[q]), top_k=10),
        "store_only_weaviate_haystack": lambda q: direct_retriever.run(query_embedding=query_vectors[q]),
    }
    names = list(variants)
    for query in queries[:10]:
        for function in variants.values():
            function(query)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for position, query in enumerate(queries):
            shift = position % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                variants[name](query)
                samples[name].append((time.perf_counter() - started) * 1000)
    ours.close(), direct.close()
    return {
        "documents": len(corpus.ids),
        "queries": len(queries),
        "rounds": rounds,
        "isolation": "one process, variants alternating query by query",
        "text_to_top10": {name: summary(values) for name, values in samples.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=int, default=100_000, help="the larger scale (0: SciFact scale only)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--breakdown", action="store_true", help="also split SciFact text -> top-10 into its parts")
    parser.add_argument("--skip-cluster", action="store_true", help="only the breakdown (keeps an earlier cluster run)")
    args = parser.parse_args()
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {message}", flush=True)

    queries = unit_vectors(args.queries, DIMENSION, seed=1)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as directory:
        server = WeaviateServer(data_dir=Path(directory) / "single").start(quiet=False)
        cluster = WeaviateCluster(data_dir=Path(directory) / "cluster", nodes=3)
        scales: dict = {}
        try:
            if args.breakdown:
                scales["scifact_text_to_top10_breakdown"] = breakdown(server, log)
            if not args.skip_cluster:
                cluster.start(quiet=False, timeout=300)
                log("single node and 3-node cluster ready")
                scales["scifact_scale"] = run_scale("Scifact", 5183, server, cluster, queries, log)
                if args.synthetic:
                    scales[f"synthetic_{args.synthetic // 1000}k"] = run_scale(
                        "Synthetic", args.synthetic, server, cluster, queries, log
                    )
        finally:
            cluster.stop()
            server.stop()
    result = {
        "setup": {
            "cluster": "3 nodes on 127.0.0.1, replication factor 3, consistency QUORUM, async replication on",
            "single": "1 node, no replication",
            "dimension": DIMENSION,
            "queries": args.queries,
            "chunk": CHUNK,
            "vectors": "synthetic unit vectors, seed 0 (queries seed 1)",
        },
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "wall_minutes": round((time.monotonic() - started) / 60, 1),
        **scales,
    }
    previous = RESULTS / "weaviate_cluster.json"
    if previous.exists():  # a partial run (--skip-cluster, or no --breakdown) keeps the other sections
        kept = json.loads(previous.read_text())
        for key in ("scifact_text_to_top10_breakdown", "scifact_scale", "synthetic_100k"):
            if key in kept and key not in result:
                result[key] = kept[key]
    path = write_result("weaviate_cluster", result)
    print(path.read_text())


if __name__ == "__main__":
    main()
