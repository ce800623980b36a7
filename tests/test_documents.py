import pytest

from dual_encoder.documents import DocumentInput, build_document_text, embed_documents
from dual_encoder.errors import InvalidDocumentError


def test_text_is_meta_fields_then_content():
    document = DocumentInput(id="1", content="body", meta={"title": "T", "year": 2020, "skip": None})
    assert build_document_text(document, ["title", "year", "skip", "absent"], " | ") == "T | 2020 | body"


def test_non_text_content_is_refused_before_encoding(minilm):
    with pytest.raises(InvalidDocumentError, match="Document 'b' has content of type bytes"):
        embed_documents(minilm, [DocumentInput(id="a", content="fine"), DocumentInput(id="b", content=b"raw")])


def test_dict_meta_field_is_refused():
    document = DocumentInput(id="1", content="x", meta={"info": {"a": 1}})
    with pytest.raises(InvalidDocumentError, match="meta field 'info'.*holds a dict"):
        build_document_text(document, ["info"], "\n")
