"""Weaviate as an evaluation store for ``dual-encoder evaluate --store-type weaviate``.

Registered under the ``dual_encoder.evaluation_stores`` entry point, so the framework-free CLI finds it
without importing Haystack or Weaviate itself. It goes through the same path as a pipeline: the document
embedder stamps the fingerprint, :class:`DualEncoderWeaviateDocumentStore` writes and searches.

Example::

    store = WeaviateEvaluationStore(url="http://127.0.0.1:8080", collection_name="SciFactEval")
    report = evaluate_store("../shared/data/scifact", encoder=DualEncoder("all-MiniLM-L6-v2"), store=store)
"""

from __future__ import annotations

from haystack import Document
from haystack.document_stores.types import DuplicatePolicy
from haystack.utils import Secret

from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder
from haystack_integrations.document_stores.dual_encoder.weaviate_store import DualEncoderWeaviateDocumentStore


class WeaviateEvaluationStore:
    """A Weaviate collection to evaluate in.

    :param url: REST URL (default: the ``WEAVIATE_URL`` environment variable).
    :param collection_name: The collection; it records the encoder of its first write and refuses another.
    :param grpc_port: gRPC port (default: ``WEAVIATE_GRPC_PORT`` or 50051).
    """

    def __init__(self, url: str | None = None, collection_name: str = "DualEncoderEvaluation", grpc_port: int | None = None):
        self.document_store = DualEncoderWeaviateDocumentStore(
            url=url if url is not None else Secret.from_env_var("WEAVIATE_URL"),
            collection_name=collection_name,
            grpc_port=grpc_port,
        )

    def index(self, encoder, documents: list, *, progress_bar: bool) -> None:
        embedder = DualEncoderDocumentEmbedder(encoder=encoder.config, progress_bar=progress_bar)
        embedded = embedder.run(documents=[Document(id=doc.id, content=doc.content) for doc in documents])["documents"]
        self.document_store.write_documents(embedded, policy=DuplicatePolicy.OVERWRITE)

    def search(self, encoder, query_vectors, *, top_k: int) -> list[dict[str, float]]:
        from dual_encoder.fingerprint import check_store_compatible

        check_store_compatible(encoder.fingerprint, self.document_store.get_embedding_space(), where="Weaviate")
        return [
            {doc.id: doc.score for doc in self.document_store.embedding_retrieval(vector.tolist(), top_k=top_k)}
            for vector in query_vectors
        ]
