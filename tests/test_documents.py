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


# ------------------------------------------------------------------------------------ reading sources
def test_text_files_are_read_as_utf8_with_unix_line_endings(tmp_path):
    from dual_encoder.sources import read_documents

    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_bytes("\ufeffTitle\r\nLine two\rend".encode())
    (folder / "sub" / "b.TXT").write_text("Deeper", encoding="utf-8")
    (folder / "ignored.pdf").write_bytes(b"%PDF")
    documents = read_documents(folder)
    assert [(d.id, d.content, dict(d.meta)) for d in documents] == [
        ("a.md", "Title\nLine two\nend", {"path": "a.md"}),
        ("sub/b.TXT", "Deeper", {"path": "sub/b.TXT"}),
    ]
    (single,) = read_documents(folder / "sub" / "b.TXT")
    assert (single.id, single.content, dict(single.meta)) == ("b.TXT", "Deeper", {"path": "b.TXT"})


def test_jsonl_keeps_every_field(tmp_path):
    from dual_encoder.sources import read_documents

    source = tmp_path / "docs.jsonl"
    source.write_text(
        '{"id": "a", "content": "body", "text": "kept in meta", "meta": {"lang": "en"}, "year": 2020}\n'
        "\n"
        '{"_id": 7, "text": "second"}\n'
    )
    first, second = read_documents(source)
    assert (first.id, first.content, dict(first.meta)) == (
        "a",
        "body",
        {"text": "kept in meta", "year": 2020, "lang": "en"},
    )
    assert (second.id, second.content, dict(second.meta)) == ("7", "second", {})


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            b'{"id": "a", "content": "x"}\n{"id": "a", "content": "y"}\n',
            "docs.jsonl:2 repeats id 'a' first used on line 1",
        ),
        (b'{"content": "x"}\n["list"]\n', "docs.jsonl:2 must be a JSON object"),
        (b'{"content": "caf\xe9"}\n', "docs.jsonl:1 is not UTF-8 text (byte 0xe9); save the file as UTF-8"),
        (b"\n\n", "holds no documents. Write one JSON object per line"),
        (b'{"content": "x", "meta": [1]}\n', "'meta' must be an object, got list"),
    ],
)
def test_bad_jsonl_is_refused_by_line(tmp_path, lines, message):
    from dual_encoder.sources import read_documents

    source = tmp_path / "docs.jsonl"
    source.write_bytes(lines)
    with pytest.raises(InvalidDocumentError) as error:
        read_documents(source)
    assert message in str(error.value)


def test_every_unreadable_file_of_a_folder_is_named_at_once(tmp_path):
    from dual_encoder.sources import read_documents

    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "zero.txt").write_bytes(b"abc\x00def")
    (tmp_path / "latin.md").write_bytes("na\xefve".encode("latin-1"))
    with pytest.raises(InvalidDocumentError) as error:
        read_documents(tmp_path)
    message = str(error.value)
    assert message.startswith(f"2 of 3 files in '{tmp_path}' cannot be indexed as text; nothing was indexed.")
    assert "zero.txt' is a binary file" in message and "latin.md' is not UTF-8 text (byte 0xef at offset 2)" in message
    assert "good.txt" not in message
