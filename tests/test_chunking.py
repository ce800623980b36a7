"""Passage splitting: passages fit the document tower, cover the whole text, keep their position, and re-runs
give the same ids; a changed document leaves no stale passages in the store."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest

from dual_encoder.chunking import (
    CHAR_END_KEY,
    CHAR_START_KEY,
    PASSAGE_COUNT_KEY,
    PASSAGE_INDEX_KEY,
    SOURCE_ID_KEY,
    PassageSplitter,
    plan_passages,
    stale_passage_ids,
)
from dual_encoder.documents import DocumentInput, build_document_text
from dual_encoder.errors import ConfigurationError, InvalidDocumentError


def sample_paragraphs() -> list[str]:
    corpus = resources.files("dual_encoder") / "sample_data" / "corpus.jsonl"
    return [json.loads(line)["content"] for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def long_text() -> str:
    """About 2,000 words of real prose in paragraphs, far beyond all-MiniLM-L6-v2's 256 tokens."""
    return "\n\n".join(sample_paragraphs() * 2)


def word_offsets(text: str) -> list[tuple[int, int]]:
    """Whitespace words as 'tokens', to test the planning on its own."""
    return [(match.start(), match.end()) for match in re.finditer(r"\S+", text)]


def tokens_in(span: tuple[int, int], offsets: list[tuple[int, int]]) -> int:
    return sum(1 for start, end in offsets if start >= span[0] and end <= span[1])


def assert_covers(text: str, spans: list[tuple[int, int]]) -> None:
    covered = bytearray(len(text))
    for start, end in spans:
        covered[start:end] = b"\x01" * (end - start)
    lost = [i for i, char in enumerate(text) if not char.isspace() and not covered[i]]
    assert not lost, f"characters in no passage: {text[lost[0] : lost[0] + 40]!r}"


# ---------------------------------------------------------------------------------------------- planning
def test_plan_respects_the_budget_covers_every_word_and_overlaps():
    text = " ".join(f"w{i}" for i in range(1000))
    offsets = word_offsets(text)
    spans = plan_passages(text, offsets, budget=100, overlap=10)
    assert all(tokens_in(span, offsets) <= 100 for span in spans)
    assert_covers(text, spans)
    for (_, previous_end), (next_start, _) in zip(spans, spans[1:]):
        assert next_start < previous_end  # overlapping
        assert tokens_in((next_start, previous_end), offsets) == 10
    assert len(spans) == 11  # 100 words, then 90 new words per passage: 100 + 10 * 90 = 1000


def test_plan_cuts_at_paragraph_then_sentence_then_word():
    paragraph = "First part of the text here. " * 12  # 72 words, sentences of 6
    text = paragraph + "\n\n" + "Second part goes on and on. " * 12
    offsets = word_offsets(text)
    spans = plan_passages(text, offsets, budget=100, overlap=0)
    assert text[spans[0][0] : spans[0][1]] == paragraph.strip()  # the paragraph break, not the hard limit
    sentences = "One two three four five six seven. " * 20
    spans = plan_passages(sentences, word_offsets(sentences), budget=50, overlap=0)
    assert sentences[: spans[0][1]].endswith("seven.") and tokens_in(spans[0], word_offsets(sentences)) == 49


def test_plan_keeps_a_markdown_heading_with_the_text_under_it():
    body = "Words in a sentence here. " * 6  # 30 words
    text = f"# First\n\n{body}\n\n## Second\n\n{body}\n\n{body}"
    spans = plan_passages(text, word_offsets(text), budget=60, overlap=0)
    assert text[spans[0][0] : spans[0][1]] == f"# First\n\n{body.strip()}"  # not cut after "## Second"
    assert text[spans[1][0] :].startswith("## Second")


def test_plan_cuts_a_word_longer_than_a_passage_and_loses_nothing():
    text = "start " + "x" * 50 + " end"
    offsets = [(0, 5)] + [(6 + i, 7 + i) for i in range(50)] + [(57, 60)]  # one token per character of the word
    spans = plan_passages(text, offsets, budget=20, overlap=0)
    assert_covers(text, spans)
    assert all(tokens_in(span, offsets) <= 20 for span in spans)


def test_plan_refuses_an_overlap_of_more_than_half():
    with pytest.raises(ValueError, match="overlap"):
        plan_passages("a b c", word_offsets("a b c"), budget=4, overlap=3)


# ------------------------------------------------------------------------------- with the real tokenizer
def test_passages_fit_the_model_and_cover_the_text(minilm, long_text):
    splitter = PassageSplitter.for_encoder(minilm)
    assert splitter.max_tokens == minilm.max_seq_length - 2  # [CLS] and [SEP]
    assert splitter.overlap_tokens == splitter.max_tokens // 8
    passages = splitter.split_text(long_text)
    assert len(passages) > 5
    assert minilm.count_truncated([passage.text for passage in passages]) == 0
    assert minilm.count_truncated([long_text]) == 1
    assert all(long_text[p.start : p.end] == p.text for p in passages)
    assert_covers(long_text, [(p.start, p.end) for p in passages])
    # Cut where a sentence or paragraph ends, not inside one.
    assert all(p.text.endswith((".", "!", "?")) for p in passages[:-1])
    assert splitter.split_text(long_text) == passages


def test_a_smaller_size_and_overlap_are_kept(minilm, long_text):
    splitter = PassageSplitter.for_encoder(minilm, max_tokens=64, overlap_tokens=16)
    passages = splitter.split_text(long_text)
    lengths = splitter._token_count([p.text for p in passages])
    assert max(lengths) <= 64 + 2 and min(lengths[:-1]) >= 32 + 2  # cut in a passage's second half
    overlaps = [previous.end - following.start for previous, following in zip(passages, passages[1:])]
    assert all(overlap > 0 for overlap in overlaps)
    no_overlap = PassageSplitter.for_encoder(minilm, max_tokens=64, overlap_tokens=0).split_text(long_text)
    assert all(b.start >= a.end for a, b in zip(no_overlap, no_overlap[1:])) and len(no_overlap) < len(passages)


def test_prompt_and_embedded_meta_fields_count_against_the_limit(minilm, long_text):
    title = "A long title about oceans, bread, heat pumps and many other subjects " * 4
    splitter = PassageSplitter(
        minilm.model[0].tokenizer,
        token_limit=minilm.max_seq_length,
        prompt="passage: ",
        meta_fields_to_embed=["title"],
    )
    document = DocumentInput(id="doc", content=long_text, meta={"title": title})
    passages = splitter.split_documents([document])
    embedded = ["passage: " + build_document_text(p, ["title"], "\n") for p in passages]
    assert minilm.count_truncated(embedded) == 0
    plain = PassageSplitter.for_encoder(minilm).split_documents([document])
    assert len(passages) > len(plain)  # the title's tokens left less room for text


def test_documents_become_passages_with_source_and_position(minilm, long_text):
    splitter = PassageSplitter.for_encoder(minilm)
    short = DocumentInput(id="short.md", content="Bread rises because yeast makes gas.", meta={"path": "short.md"})
    long = DocumentInput(id="long.md", content=long_text, meta={"path": "long.md"})
    empty = DocumentInput(id="empty.md", content="", meta={"path": "empty.md"})
    passages = splitter.split_documents([short, long, empty])
    assert passages[0] == DocumentInput(
        id="short.md",
        content=short.content,
        meta={
            "path": "short.md",
            SOURCE_ID_KEY: "short.md",
            PASSAGE_INDEX_KEY: 0,
            PASSAGE_COUNT_KEY: 1,
            CHAR_START_KEY: 0,
            CHAR_END_KEY: len(short.content),
        },
    )
    parts = [p for p in passages if p.meta[SOURCE_ID_KEY] == "long.md"]
    assert [p.id for p in parts] == [f"long.md#{i}" for i in range(len(parts))]
    for index, part in enumerate(parts):
        assert part.meta[PASSAGE_INDEX_KEY] == index and part.meta[PASSAGE_COUNT_KEY] == len(parts)
        assert long_text[part.meta[CHAR_START_KEY] : part.meta[CHAR_END_KEY]] == part.content
        assert part.meta["path"] == "long.md"
    assert passages[-1].id == "empty.md" and passages[-1].content == ""  # kept, never dropped


def test_bad_settings_and_documents_are_refused(minilm):
    with pytest.raises(ConfigurationError, match="at most 254 tokens"):
        PassageSplitter.for_encoder(minilm, max_tokens=1000)
    with pytest.raises(ConfigurationError, match="at most 32 tokens"):
        PassageSplitter.for_encoder(minilm, max_tokens=64, overlap_tokens=40)
    with pytest.raises(ConfigurationError, match="positive"):
        PassageSplitter.for_encoder(minilm, max_tokens=0)
    splitter = PassageSplitter.for_encoder(minilm, max_tokens=16, overlap_tokens=0)
    with pytest.raises(InvalidDocumentError, match="already has meta \\['char_start'\\]"):
        splitter.split_documents([DocumentInput(id="a", content="text", meta={"char_start": 3})])
    long = "word " * 40
    with pytest.raises(InvalidDocumentError, match="Passage id 'a#1' of document 'a' is also the id of document 'a#1'"):
        splitter.split_documents([DocumentInput(id="a#1", content="x"), DocumentInput(id="a", content=long)])
    with pytest.raises(InvalidDocumentError, match="content of type int"):
        splitter.split_documents([DocumentInput(id="n", content=5)])
    with pytest.raises(InvalidDocumentError, match="Document 't': no passage fits the model's 256-token limit"):
        PassageSplitter.for_encoder(minilm, meta_fields_to_embed=["title"]).split_documents(
            [DocumentInput(id="t", content=long, meta={"title": "huge " * 300})]
        )


# ------------------------------------------------------------------------------------ stale passages
def test_a_shorter_document_leaves_no_stale_passages(minilm, long_text, tmp_path):
    from dual_encoder.embedded import open_embedded_store
    from dual_encoder.search import index_documents

    store = open_embedded_store(tmp_path / "store")
    splitter = PassageSplitter.for_encoder(minilm, max_tokens=64, overlap_tokens=8)
    other = DocumentInput(id="other", content=long_text[:3000])
    first = splitter.split_documents([DocumentInput(id="doc", content=long_text), other])
    summary = index_documents(minilm, store, first, replace_sources=True)
    assert summary.encoded == len(first) and summary.removed == 0

    again = index_documents(minilm, store, first, replace_sources=True)
    assert (again.encoded, again.unchanged, again.written, again.removed) == (0, len(first), 0, 0)

    shorter = splitter.split_documents([DocumentInput(id="doc", content=long_text[:2000]), other])
    summary = index_documents(minilm, store, shorter, replace_sources=True)
    old_doc_ids = {p.id for p in first if p.meta[SOURCE_ID_KEY] == "doc"}
    new_doc_ids = {p.id for p in shorter if p.meta[SOURCE_ID_KEY] == "doc"}
    assert summary.removed == len(old_doc_ids - new_doc_ids) > 0
    assert {r.id for r in store.list()} == {p.id for p in shorter}
    # The unchanged leading passages of the edited document kept their embeddings.
    assert summary.encoded < len(new_doc_ids)

    # Shrunk to one passage: stored under the document's own id, and its old passages go.
    tiny = splitter.split_documents([DocumentInput(id="doc", content="Now it is short."), other])
    index_documents(minilm, store, tiny, replace_sources=True)
    assert {r.id for r in store.list()} == {p.id for p in tiny} and "doc" in {p.id for p in tiny}


def test_a_whole_document_stored_before_splitting_is_replaced(minilm, long_text, tmp_path):
    from dual_encoder.embedded import open_embedded_store
    from dual_encoder.search import index_documents

    store = open_embedded_store(tmp_path / "store")
    index_documents(minilm, store, [DocumentInput(id="notes.md", content=long_text)])  # as earlier versions did
    passages = PassageSplitter.for_encoder(minilm).split_documents([DocumentInput(id="notes.md", content=long_text)])
    assert stale_passage_ids(store, passages) == ["notes.md"]  # before writing: the whole document is stale
    summary = index_documents(minilm, store, passages, replace_sources=True)
    assert (
        summary.removed == 1
        and store.count() == len(passages)
        and "notes.md" not in store.stored_versions(["notes.md"])
    )
    # Passages written without replace_sources (a source written in several calls) are left alone.
    half = passages[: len(passages) // 2]
    assert index_documents(minilm, store, half).removed == 0 and store.count() == len(passages)
