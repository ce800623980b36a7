"""Haystack's own document-store tests (``haystack.testing.document_store``, sync and async) against
``DualEncoderWeaviateDocumentStore`` on the real Weaviate server the test session starts, one fresh
collection per test.

Two documented differences from Haystack's reference store are allowed for in the comparison: Weaviate keeps
dates as RFC 3339 (naive ISO dates are stored as UTC and read back with a ``Z``), and an unset meta value reads
back as absent.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from haystack import Document
from haystack.document_stores.errors import DuplicateDocumentError
from haystack.testing.document_store import DeleteAllTest, DocumentStoreBaseTests
from haystack.testing.document_store_async import (
    CountDocumentsAsyncTest,
    DeleteAllAsyncTest,
    DeleteDocumentsAsyncTest,
    WriteDocumentsAsyncTest,
)
from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore

#: The filterable documents' meta, declared so range filters compare numbers and dates, not text.
SUITE_META_FIELDS = {
    "name": "text",
    "page": "text",
    "chapter": "text",
    "number": "int",
    "date": "date",
    "no_embedding": "boolean",
}


def _normalized(value):
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


class TestWeaviateDocumentStoreSuite(
    DocumentStoreBaseTests,
    DeleteAllTest,
    CountDocumentsAsyncTest,
    WriteDocumentsAsyncTest,
    DeleteDocumentsAsyncTest,
    DeleteAllAsyncTest,
):
    @pytest.fixture
    def document_store(self, weaviate_env, collection_name):
        store = DualEncoderWeaviateDocumentStore(collection_name=collection_name, meta_fields=SUITE_META_FIELDS)
        yield store
        store.client.collections.delete(collection_name)
        store.close()

    @staticmethod
    def assert_documents_are_equal(received, expected):
        assert len(received) == len(expected)
        received = sorted(received, key=lambda doc: doc.id)
        expected = sorted(expected, key=lambda doc: doc.id)
        for got, want in zip(received, expected):
            assert (got.id, got.content, got.blob, got.sparse_embedding) == (
                want.id,
                want.content,
                want.blob,
                want.sparse_embedding,
            )
            if want.embedding is None:
                assert got.embedding is None
            else:
                # Weaviate keeps float32, as the embedded store does.
                np.testing.assert_array_equal(
                    np.asarray(got.embedding, np.float32), np.asarray(want.embedding, np.float32)
                )
            keys = set(got.meta) | set(want.meta)
            assert {k: _normalized(got.meta.get(k)) for k in keys} == {k: _normalized(want.meta.get(k)) for k in keys}

    # Haystack leaves the default policy to each store: here NONE means FAIL, as on the embedded store.
    def test_write_documents(self, document_store):
        doc = Document(content="test doc")
        assert document_store.write_documents([doc]) == 1
        with pytest.raises(DuplicateDocumentError):
            document_store.write_documents([doc])
        self.assert_documents_are_equal(document_store.filter_documents(), [doc])

    async def test_write_documents_async(self, document_store):
        doc = Document(content="test doc")
        assert await document_store.write_documents_async([doc]) == 1
        with pytest.raises(DuplicateDocumentError):
            await document_store.write_documents_async([doc])
        self.assert_documents_are_equal(await document_store.filter_documents_async(), [doc])
