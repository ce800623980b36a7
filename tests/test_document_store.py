"""Haystack's reusable DocumentStore tests (sync and async), run against the embedded default store."""

import math

import pytest
from haystack import Document
from haystack.document_stores.errors import DuplicateDocumentError
from haystack.document_stores.types import DuplicatePolicy
from haystack.testing.document_store import CountDocumentsByFilterTest, DocumentStoreBaseExtendedTests
from haystack.testing.document_store_async import (
    CountDocumentsAsyncTest,
    CountDocumentsByFilterAsyncTest,
    DeleteAllAsyncTest,
    DeleteByFilterAsyncTest,
    DeleteDocumentsAsyncTest,
    FilterDocumentsAsyncTest,
    UpdateByFilterAsyncTest,
    WriteDocumentsAsyncTest,
)
from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore


class TestEmbeddedDocumentStore(
    DocumentStoreBaseExtendedTests,
    CountDocumentsByFilterTest,
    CountDocumentsAsyncTest,
    CountDocumentsByFilterAsyncTest,
    DeleteAllAsyncTest,
    DeleteByFilterAsyncTest,
    DeleteDocumentsAsyncTest,
    FilterDocumentsAsyncTest,
    UpdateByFilterAsyncTest,
    WriteDocumentsAsyncTest,
):
    @pytest.fixture
    def document_store(self, tmp_path):
        return EmbeddedDocumentStore(path=str(tmp_path / "store"))

    def assert_documents_are_equal(self, received, expected):
        """Embeddings come back as float32 (the store keeps one float32 matrix); everything else is exact."""
        assert len(received) == len(expected)
        for got, want in zip(received, expected):
            assert got.id == want.id and got.content == want.content and got.meta == want.meta
            assert got.blob == want.blob and got.sparse_embedding == want.sparse_embedding
            if want.embedding is None:
                assert got.embedding is None
            else:
                assert all(
                    math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(got.embedding, want.embedding)
                )

    def test_write_documents(self, document_store):
        """Default policy NONE behaves like FAIL, as in Haystack's InMemoryDocumentStore."""
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


def test_persists_and_reloads_documents_with_every_field(tmp_path):
    from haystack.dataclasses import ByteStream, SparseEmbedding

    document = Document(
        id="x",
        content="text",
        meta={"a": 1, "b": ["c"]},
        embedding=[0.5, 0.25],
        blob=ByteStream(data=b"\x00\x01", mime_type="application/octet-stream"),
        sparse_embedding=SparseEmbedding(indices=[1, 5], values=[0.5, 0.25]),
    )
    EmbeddedDocumentStore(path=str(tmp_path)).write_documents([document], policy=DuplicatePolicy.OVERWRITE)
    assert EmbeddedDocumentStore(path=str(tmp_path)).filter_documents() == [document]


def test_round_trips_through_to_dict(tmp_path):
    store = EmbeddedDocumentStore(path=str(tmp_path), similarity="dot")
    clone = EmbeddedDocumentStore.from_dict(store.to_dict())
    assert (clone.path, clone.similarity) == (str(tmp_path), "dot")
