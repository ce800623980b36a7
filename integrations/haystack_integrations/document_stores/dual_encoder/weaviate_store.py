"""Haystack face of a Weaviate collection set up for one dual encoder."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import replace
from typing import Any

from haystack import Document, default_from_dict, default_to_dict
from haystack.document_stores.errors import DocumentStoreError
from haystack.document_stores.types import DuplicatePolicy
from haystack.errors import FilterError
from haystack.utils.auth import Secret, deserialize_secrets_inplace
from weaviate.config import AdditionalConfig, Timeout

from dual_encoder import errors
from dual_encoder.config import SIMILARITIES
from dual_encoder.filters import compile_filter, rename_fields
from dual_encoder.fingerprint import (
    DOCUMENT_SPACE_META_KEY,
    EMBEDDED_INPUT_META_KEY,
    StoredSpace,
    describe_stored_space,
    parse_stored_space,
    space_of_documents,
)
from dual_encoder.similarity import WEAVIATE_DISTANCE, score_from_weaviate_distance
from haystack_integrations.document_stores.weaviate import WeaviateDocumentStore
from haystack_integrations.document_stores.weaviate.auth import AuthApiKey
from haystack_integrations.document_stores.weaviate.document_store import DOCUMENT_COLLECTION_PROPERTIES

#: Objects per lookup of what Weaviate already holds, before a write (see ``_already_stored``).
STORED_LOOKUP_CHUNK = 1000

#: Weaviate data types accepted in ``meta_fields``.
META_FIELD_TYPES = ("text", "text[]", "int", "int[]", "number", "number[]", "boolean", "boolean[]", "date", "date[]")


class WeaviateUnavailableError(errors.DualEncoderError, ConnectionError):
    """Weaviate could not be reached, refused the connection, or went away during a call.

    ``unconfirmed_ids`` lists the documents a failed write may not have stored.
    """

    def __init__(self, message: str, unconfirmed_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.unconfirmed_ids = unconfirmed_ids or []


class PartialWriteError(DocumentStoreError):
    """Weaviate refused some objects of a batch; ``failed`` maps each unwritten document id to the reason."""

    def __init__(self, failed: dict[str, str]) -> None:
        self.failed = failed
        listed = "; ".join(f"'{doc_id}': {reason}" for doc_id, reason in list(failed.items())[:20])
        more = f" (and {len(failed) - 20} more)" if len(failed) > 20 else ""
        super().__init__(
            f"{len(failed)} document(s) were not written to Weaviate: {listed}{more}. The other documents of the "
            f"batch were written. Fix these documents and write them again (writes are idempotent)."
        )


class DualEncoderWeaviateDocumentStore(WeaviateDocumentStore):
    """A ``WeaviateDocumentStore`` whose collection is created explicitly for a dual encoder.

    The collection has no vectorizer, an HNSW index whose distance matches ``similarity``, declared
    properties for ``meta_fields`` and for the fingerprint meta, and records the encoder fingerprint,
    dimension and similarity of its first embedded write in its description. Later writes from another
    encoder, and retrievers with another query tower, are refused. Scores are converted from Weaviate's
    distance to the similarity itself, the same scale as :class:`EmbeddedDocumentStore`.

    Usage (``WEAVIATE_URL=http://127.0.0.1:8080``, optional ``WEAVIATE_API_KEY`` and ``WEAVIATE_GRPC_PORT``)::

        store = DualEncoderWeaviateDocumentStore(collection_name="Articles", meta_fields={"year": "int"})
        store.write_documents(embedded_documents)

    :param url: Weaviate's REST URL; a ``Secret`` read from ``WEAVIATE_URL`` by default, so it is never
        written into a serialized pipeline.
    :param collection_name: Collection to use (created when missing); Weaviate capitalises the first letter.
    :param similarity: ``"cosine"`` or ``"dot"``; must match the encoder.
    :param meta_fields: Meta fields to declare, name to Weaviate data type (``text``, ``int``, ``number``,
        ``boolean``, ``date`` or a ``[]`` list of one). Declared types make range filters reliable.
    :param api_key: API key; a ``Secret`` read from ``WEAVIATE_API_KEY`` when that variable is set.
    :param grpc_port: gRPC port; ``None`` reads ``WEAVIATE_GRPC_PORT``, else 50051.
    :param timeout: Seconds to wait for Weaviate to answer a connection attempt (queries may take 3x,
        inserts 6x); an unreachable server fails within that bound.
    :param batch_size: Documents per write request.
    """

    def __init__(
        self,
        *,
        url: Secret | str = Secret.from_env_var("WEAVIATE_URL"),
        collection_name: str = "DualEncoderDocuments",
        similarity: str = "cosine",
        meta_fields: dict[str, str] | None = None,
        api_key: Secret | None = Secret.from_env_var("WEAVIATE_API_KEY", strict=False),
        grpc_port: int | None = None,
        timeout: float = 10.0,
        batch_size: int = 500,
    ) -> None:
        if similarity not in SIMILARITIES:
            raise errors.ConfigurationError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}.")
        meta_fields = dict(meta_fields or {})
        for name, data_type in meta_fields.items():
            if data_type not in META_FIELD_TYPES:
                raise errors.ConfigurationError(
                    f"meta_fields['{name}'] = {data_type!r} is not a Weaviate data type; use one of {META_FIELD_TYPES}."
                )
        self.url = url
        self.collection_name = collection_name
        self.similarity = similarity
        self.meta_fields = meta_fields
        self.api_key = api_key
        self.grpc_port = grpc_port
        self.timeout = timeout
        self.batch_size = batch_size
        self._stored_space: StoredSpace | None = None
        self._connect_lock = threading.Lock()
        #: Documents that ``write_documents`` found stored exactly as given and did not send again (a count since
        #: this store object was created).
        self.unchanged_not_rewritten = 0
        # The URL, key and gRPC port are resolved on first use, so a pipeline loads without them.
        super().__init__(
            url=None,
            collection_settings=_collection_settings(collection_name, similarity, meta_fields),
            additional_config=AdditionalConfig(timeout=Timeout(init=timeout, query=3 * timeout, insert=6 * timeout)),
        )

    # ---------------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            url=self.url.to_dict() if isinstance(self.url, Secret) else self.url,
            collection_name=self.collection_name,
            similarity=self.similarity,
            meta_fields=dict(self.meta_fields),  # a copy: YAML would alias a dict two components share
            api_key=self.api_key.to_dict() if self.api_key is not None else None,
            grpc_port=self.grpc_port,
            timeout=self.timeout,
            batch_size=self.batch_size,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualEncoderWeaviateDocumentStore:
        parameters = data.get("init_parameters", {})
        if isinstance(parameters.get("url"), dict):
            deserialize_secrets_inplace(parameters, keys=["url"])
        deserialize_secrets_inplace(parameters, keys=["api_key"])
        return default_from_dict(cls, data)

    # ------------------------------------------------------------------------------------ connection
    @property
    def resolved_url(self) -> str:
        url = self.url.resolve_value() if isinstance(self.url, Secret) else self.url
        if not url:
            raise errors.ConfigurationError(
                "No Weaviate URL: set WEAVIATE_URL (for example http://127.0.0.1:8080) or pass url=..."
            )
        return url

    @property
    def client(self):
        client = self._client
        if client is not None:
            return client
        with self._connect_lock:
            return self._connect()

    def _connect(self):
        if self._client is not None:  # another thread connected while this one waited
            return self._client
        self._url = self.resolved_url
        self._grpc_port = self.grpc_port if self.grpc_port is not None else int(os.environ.get("WEAVIATE_GRPC_PORT", "50051"))
        key = self.api_key.resolve_value() if self.api_key is not None else None
        self._auth_client_secret = AuthApiKey(api_key=self.api_key) if key else None
        try:
            return super().client
        except Exception as error:  # the client raises several unrelated types for one cause
            if "already exists" in str(error) and self._client is not None and self._client.is_connected():
                return self._client  # another client created the collection between the check and the create
            self._client = None
            raise WeaviateUnavailableError(
                f"Cannot use Weaviate at {self._url} (gRPC port {self._grpc_port}) for collection "
                f"'{self.collection_name}': {type(error).__name__}: {error}. Check that the server runs (for a "
                f"local one: `dual-encoder weaviate start`), that WEAVIATE_URL / WEAVIATE_GRPC_PORT point to it, "
                f"and that WEAVIATE_API_KEY is set if it requires a key."
            ) from error

    @property
    def collection(self):
        # The parent tests `if self._collection:`, and a Collection's truth value is its object count: one
        # network round trip per access. Test identity instead.
        if self._collection is None:
            self._collection = self.client.collections.get(self._collection_settings["class"])
        return self._collection

    # ----------------------------------------------------------------------------------- fingerprint
    def get_embedding_space(self) -> StoredSpace:
        """The space, dimension and similarity recorded in the collection (for fingerprint checks)."""
        if self._stored_space is None:
            recorded = parse_stored_space(self.collection.config.get().description)
            if recorded is not None:
                self._stored_space = recorded  # a recorded space never changes; only cache known ones
            else:
                return StoredSpace(document_space=None, dimension=None, similarity=self.similarity)
        return self._stored_space

    # --------------------------------------------------------------------------------------- writing
    def write_documents(self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE) -> int:
        """Write documents after checking their encoder fingerprints and dimensions.

        Uses Weaviate's batch API for ``NONE``/``OVERWRITE`` (idempotent: the same id always maps to the same
        object). Refused objects raise ``PartialWriteError`` (a ``DocumentStoreError``) naming every id that was
        not written and why; a lost server raises ``WeaviateUnavailableError`` with the unconfirmed ids.
        """
        if not isinstance(documents, list) or not all(isinstance(doc, Document) for doc in documents):
            raise ValueError("write_documents expects a list of Document objects.")
        recorded = self.get_embedding_space()
        established = space_of_documents(
            ((d.id, d.meta.get(DOCUMENT_SPACE_META_KEY), len(d.embedding) if d.embedding else None) for d in documents),
            recorded if recorded.dimension is not None else None,
            where=f"Weaviate collection '{self.collection.name}'",
        )
        if established is not None and recorded.dimension is None:
            self._record_space(replace(established, similarity=self.similarity))
        return super().write_documents(documents, policy=policy)

    def _batch_write(self, documents: list[Document]) -> int:
        """Upsert in fixed-size batches, so failures are known per document and a dead server fails fast.

        Haystack's dynamic batcher retries an unreachable server with exponential back-off for minutes; one
        ``insert_many`` call gives up after seconds and reports errors per object. Objects Weaviate already
        holds exactly as they would be written are not sent again (see :meth:`_already_stored`), so re-running
        an indexing pipeline over unchanged documents rewrites nothing. They count as written: the store holds
        them as given.
        """
        from weaviate.classes.data import DataObject
        from weaviate.util import generate_uuid5

        failed: dict[str, str] = {}
        for start in range(0, len(documents), self.batch_size):
            chunk = documents[start : start + self.batch_size]
            objects = [
                DataObject(properties=self._to_data_object(doc), uuid=generate_uuid5(doc.id), vector=doc.embedding)
                for doc in chunk
            ]
            try:
                unchanged = self._already_stored(objects)
                positions = [position for position, data in enumerate(objects) if data.uuid not in unchanged]
                self.unchanged_not_rewritten += len(objects) - len(positions)
                if not positions:
                    continue
                result = self.collection.data.insert_many([objects[position] for position in positions])
            except Exception as error:  # transport errors surface as httpx, grpc and weaviate types alike
                unconfirmed = [doc.id for doc in documents[start:]]
                raise WeaviateUnavailableError(
                    f"Lost Weaviate at {self._url} while writing: {type(error).__name__}: {error}. The first {start} of "
                    f"{len(documents)} document(s) were written; the other {len(unconfirmed)} may not be. Writes are "
                    f"idempotent: once the server is back, write the same documents again with policy OVERWRITE "
                    f"(`unconfirmed_ids` on this error lists them).",
                    unconfirmed_ids=unconfirmed,
                ) from error
            for position, problem in result.errors.items():
                failed[chunk[positions[position]].id] = problem.message
        if failed:
            raise PartialWriteError(failed)
        return len(documents)

    @staticmethod
    def _to_data_object(document: Document) -> dict[str, Any]:
        # weaviate-haystack's version deep-copies the embedding (Document.to_dict) only to drop it; the vector
        # is sent beside the properties. Same properties, without the copy.
        return WeaviateDocumentStore._to_data_object(replace(document, embedding=None))

    def _already_stored(self, objects: list[Any]) -> set[str]:
        """UUIDs of ``objects`` that Weaviate holds with exactly these properties and this vector.

        The comparison is on Weaviate's own values, not on a Document read back (weaviate-haystack's read-back
        rounds dates to the second, so a changed date could look unchanged there). Unset properties count as
        absent on both sides. Anything that differs, or reads back in another type (dates come back as
        datetimes), is written again, so a doubt costs a write, never an update.
        """
        from weaviate.classes.query import Filter

        by_uuid = {}
        # Weaviate caps one query's results (QUERY_MAXIMUM_RESULTS, 10,000 by default) and batch_size may not.
        for start in range(0, len(objects), STORED_LOOKUP_CHUNK):
            chunk = objects[start : start + STORED_LOOKUP_CHUNK]
            stored = self.collection.query.fetch_objects(
                filters=Filter.by_id().contains_any([data.uuid for data in chunk]), include_vector=True,
                limit=len(chunk),
            ).objects
            by_uuid.update((str(item.uuid), item) for item in stored)
        unchanged = set()
        for data in objects:
            item = by_uuid.get(str(data.uuid))
            if item is None:
                continue
            vector = item.vector.get("default") if isinstance(item.vector, dict) else item.vector
            if _present_values(item.properties) == _present_values(data.properties) and list(vector or []) == list(
                data.vector or []
            ):
                unchanged.add(data.uuid)
        return unchanged

    async def write_documents_async(
        self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE
    ) -> int:
        return await asyncio.to_thread(self.write_documents, documents, policy)

    def _record_space(self, space: StoredSpace) -> None:
        self.collection.config.update(description=describe_stored_space(space))
        self._stored_space = space

    # ------------------------------------------------------------------------------------- retrieval
    def embedding_retrieval(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        return_embedding: bool = False,
    ) -> list[Document]:
        """Top-k by HNSW search, best first, each ``score`` the similarity (not Weaviate's certainty)."""
        from haystack_integrations.document_stores.weaviate._filters import convert_filters

        filters = _weaviate_filters(filters)
        result = self.collection.query.near_vector(
            near_vector=query_embedding,
            include_vector=return_embedding,
            filters=convert_filters(filters) if filters else None,
            limit=top_k,
            return_metadata=["distance"],
        )
        documents = []
        for item in result.objects:
            document = self._to_document(item)
            documents.append(
                replace(
                    document,
                    score=score_from_weaviate_distance(item.metadata.distance, self.similarity),
                    embedding=document.embedding if return_embedding else None,
                )
            )
        return documents

    def hybrid_retrieval(
        self, query: str, query_embedding: list[float], filters: dict[str, Any] | None = None, top_k: int = 10,
        alpha: float = 0.7,
    ) -> list[Document]:
        """Weaviate's hybrid search (``alpha`` 1.0 = vector only, 0.0 = BM25 only), only when asked for.

        Scores are Weaviate's fused ranks, not similarities.
        """
        return self._hybrid_retrieval(query, query_embedding, _weaviate_filters(filters), top_k, alpha)

    def filter_documents(self, filters: dict[str, Any] | None = None) -> list[Document]:
        """Documents matching Haystack-syntax ``filters`` (``id`` included, as on the embedded store)."""
        return super().filter_documents(_weaviate_filters(filters))

    async def embedding_retrieval_async(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        return_embedding: bool = False,
    ) -> list[Document]:
        return await asyncio.to_thread(self.embedding_retrieval, query_embedding, filters, top_k, return_embedding)

    def _embedding_retrieval(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int | None = None,
        distance: float | None = None,
        certainty: float | None = None,
    ) -> list[Document]:
        """Keeps ``WeaviateEmbeddingRetriever`` working on this store, with converted scores."""
        if distance is not None or certainty is not None:
            raise errors.ConfigurationError(
                "distance/certainty thresholds are not supported here; filter on Document.score instead."
            )
        return self.embedding_retrieval(query_embedding, filters, top_k or 10)


def _present_values(properties: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in properties.items() if value is not None}


def _weaviate_filters(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate like every other store, then name Weaviate's property for the document id."""
    try:
        compile_filter(filters)
    except errors.FilterError as error:
        raise FilterError(str(error)) from error
    return rename_fields(filters, {"id": "_original_id"}) if filters else None


def _collection_settings(name: str, similarity: str, meta_fields: dict[str, str]) -> dict[str, Any]:
    properties = [dict(p) for p in DOCUMENT_COLLECTION_PROPERTIES]
    declared = {p["name"] for p in properties}
    for field_name, data_type in {DOCUMENT_SPACE_META_KEY: "text", EMBEDDED_INPUT_META_KEY: "text", **meta_fields}.items():
        if field_name not in declared:
            properties.append({"name": field_name, "dataType": [data_type]})
    return {
        "class": name,
        "description": "dual-encoder collection; the encoder fingerprint is recorded on the first embedded write",
        "vectorizer": "none",
        "vectorIndexType": "hnsw",
        "vectorIndexConfig": {"distance": WEAVIATE_DISTANCE[similarity]},
        "invertedIndexConfig": {"indexNullState": True, "indexPropertyLength": True},
        "properties": properties,
    }
