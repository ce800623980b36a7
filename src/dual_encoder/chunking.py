"""Splitting long documents into passages that fit the document tower, each remembering where it came from.

A document tower embeds at most ``max_seq_length`` tokens of a text and silently ignores the rest. A
:class:`PassageSplitter` cuts every document that is longer into passages the tower embeds whole:

- **size** is counted in tokens of the document tower's own tokenizer, because that is the unit the model's
  limit is in (words and characters map to tokens differently for every language and vocabulary). The text a
  passage is embedded as (document prompt, embedded meta fields, the passage, special tokens) is counted
  exactly as the encoder counts it, and a passage that would not fit is cut shorter, so none is truncated;
- **overlap**: consecutive passages share ``overlap_tokens`` tokens (moved forward to the start of a word), so
  a sentence cut at a boundary is whole in one of them;
- **cuts** fall before the last Markdown heading, else at the last paragraph break, else the last sentence end,
  else the last space between words, in the second half of a passage (never right after a heading); only a
  single word longer than a passage is cut inside.

Every passage keeps its source and position in ``meta`` (:data:`PASSAGE_META_KEYS`): ``source_id`` (the id of
the document it came from), ``passage_index`` (0-based), ``passage_count``, and ``char_start`` / ``char_end``,
with ``source_content[char_start:char_end] == passage_content``. A document that fits in one passage keeps its
own id and its whole content; a longer one becomes ``<id>#0``, ``<id>#1``, ... Splitting is deterministic, so
re-indexing an unchanged document gives the same ids and texts (and the stores skip them); a changed document
gives new passages, and :func:`stale_passage_ids` finds the stored ones it no longer has.

Example::

    splitter = PassageSplitter.for_encoder(encoder)             # passages as long as the model allows
    passages = splitter.split_documents([DocumentInput(id="report.md", content=long_text)])
    passages[1].id, passages[1].meta["char_start"]              # ("report.md#1", 1187)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dual_encoder.documents import DocumentInput, build_document_text
from dual_encoder.errors import ConfigurationError, InvalidDocumentError

if TYPE_CHECKING:
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.stores.contract import Store

SOURCE_ID_KEY = "source_id"
PASSAGE_INDEX_KEY = "passage_index"
PASSAGE_COUNT_KEY = "passage_count"
CHAR_START_KEY = "char_start"
CHAR_END_KEY = "char_end"
#: The meta keys every passage carries; a document that already has one of them is refused, never overwritten.
PASSAGE_META_KEYS = (SOURCE_ID_KEY, PASSAGE_INDEX_KEY, PASSAGE_COUNT_KEY, CHAR_START_KEY, CHAR_END_KEY)
#: Between a document id and a passage number in the ids of a split document's passages.
PASSAGE_ID_SEPARATOR = "#"

_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")
_SENTENCE_END = frozenset(".!?;:…。！？")
_HEADING = re.compile(r"[^\S\n]*#{1,6}\s")  # a Markdown heading line
# Cut quality, best first: before a heading, paragraph break, line break or sentence end, space between words,
# anything else.
_SECTION, _PARAGRAPH, _SENTENCE, _WORD, _INSIDE_WORD = 4, 3, 2, 1, 0
_MAX_REFITS = 20
_BATCH = 256  # documents tokenized per call: amortises the per-call cost, bounds the offsets held at once


@dataclass(frozen=True)
class Passage:
    """One passage of a text: ``text == source[start:end]``."""

    text: str
    start: int
    end: int


class PassageSplitter:
    """Splits texts into passages of at most ``max_tokens`` tokens that the document tower embeds whole.

    :param tokenizer: A Hugging Face "fast" tokenizer (one that reports character offsets), normally the
        document tower's; :meth:`for_encoder` takes it from an encoder.
    :param token_limit: The most tokens the tower embeds (its ``max_seq_length``).
    :param max_tokens: Longest passage, in tokens, not counting the prompt, meta fields and special tokens.
        ``None``: as many as fit ``token_limit``. More than fit is refused: those tokens would be cut off.
    :param overlap_tokens: Tokens consecutive passages share; ``None``: an eighth of ``max_tokens``. At most
        half of ``max_tokens``.
    :param prompt: The document prompt the encoder puts before every text.
    :param meta_fields_to_embed: Meta fields embedded with every passage (as in
        :func:`~dual_encoder.documents.embed_documents`); their tokens count against the limit.
    :param separator: Joins the meta fields and the content, as the embedder joins them.
    :raises ConfigurationError: a size or overlap that does not fit, or a tokenizer without offsets.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        token_limit: int,
        max_tokens: int | None = None,
        overlap_tokens: int | None = None,
        prompt: str = "",
        meta_fields_to_embed: Sequence[str] = (),
        separator: str = "\n",
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigurationError(
                f"Splitting into passages needs a 'fast' tokenizer that reports character offsets; "
                f"{type(tokenizer).__name__} does not. Save the model with its tokenizer.json (a fast tokenizer), "
                f"or split the documents yourself and index them without splitting."
            )
        self.tokenizer = tokenizer
        self.token_limit = int(token_limit)
        self.prompt = prompt
        self.meta_fields_to_embed = tuple(meta_fields_to_embed)
        self.separator = separator
        fitting = self.token_limit - self._token_count([""])[0]
        if fitting < 1:
            raise ConfigurationError(
                f"The document prompt {prompt!r} and the special tokens take all {self.token_limit} tokens the "
                f"model embeds; no text would fit. Use a shorter document prompt."
            )
        if max_tokens is None:
            max_tokens = fitting
        elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigurationError(f"The passage size must be a positive number of tokens, got {max_tokens!r}.")
        elif max_tokens > fitting:
            raise ConfigurationError(
                f"Passages of {max_tokens} tokens do not fit the model: it embeds {self.token_limit} tokens, "
                f"{fitting} of them text after the document prompt and special tokens, and cuts off the rest. "
                f"Use a passage size of at most {fitting} tokens, or a model with a longer max_seq_length."
            )
        if overlap_tokens is None:
            overlap_tokens = max_tokens // 8
        elif isinstance(overlap_tokens, bool) or not isinstance(overlap_tokens, int) or overlap_tokens < 0:
            raise ConfigurationError(f"The passage overlap must be 0 or more tokens, got {overlap_tokens!r}.")
        if overlap_tokens > max_tokens // 2:
            raise ConfigurationError(
                f"An overlap of {overlap_tokens} tokens is more than half of a {max_tokens}-token passage, so most "
                f"text would be embedded several times. Use an overlap of at most {max_tokens // 2} tokens."
            )
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens

    @classmethod
    def for_encoder(
        cls,
        encoder: DualEncoder,
        *,
        max_tokens: int | None = None,
        overlap_tokens: int | None = None,
        meta_fields_to_embed: Sequence[str] = (),
        separator: str = "\n",
    ) -> PassageSplitter:
        """A splitter with the tokenizer, token limit and document prompt of ``encoder``'s document tower."""
        from dual_encoder.encoder import DOCUMENT_ROUTE, tower_modules

        tokenizer = getattr(tower_modules(encoder.model, DOCUMENT_ROUTE)[0], "tokenizer", None)
        limit = encoder.max_seq_length
        if tokenizer is None or limit is None:
            raise ConfigurationError(
                f"The document tower of {encoder.config.model} has no tokenizer or no max_seq_length, so passage "
                f"sizes cannot be counted. Split the documents yourself and index them without splitting."
            )
        return cls(
            tokenizer,
            token_limit=limit,
            max_tokens=max_tokens,
            overlap_tokens=overlap_tokens,
            prompt=encoder.document_prompt,
            meta_fields_to_embed=meta_fields_to_embed,
            separator=separator,
        )

    # ------------------------------------------------------------------------------------------ splitting
    def split_text(self, text: str, *, meta: Mapping[str, Any] | None = None) -> list[Passage]:
        """``text`` as passages, in order; one passage (the whole text) when it fits.

        ``meta`` is the document's meta, for the fields embedded with every passage.

        :raises InvalidDocumentError: the embedded meta fields alone fill the model's limit.
        """
        return self.split_texts([DocumentInput(id="", content=text, meta=meta or {})])[0]

    def split_texts(self, documents: Sequence[DocumentInput]) -> list[list[Passage]]:
        """The passages of each document's text content (``None`` counts as ``""``), tokenized in batches.

        :raises InvalidDocumentError: naming a document whose embedded meta fields alone fill the model's limit.
        """
        results: list[list[Passage]] = []
        for begin in range(0, len(documents), _BATCH):
            results.extend(self._split_batch(documents[begin : begin + _BATCH]))
        return results

    def _split_batch(self, documents: Sequence[DocumentInput]) -> list[list[Passage]]:
        texts = [document.content or "" for document in documents]
        results: list[list[Passage] | None] = [None] * len(documents)
        pending = []
        for position, text in enumerate(texts):
            if text.strip():
                pending.append(position)
            else:
                results[position] = [Passage(text=text, start=0, end=len(text))]
        offsets = dict(zip(pending, self._offsets([texts[position] for position in pending])))
        budgets = dict(zip(pending, self._budgets([documents[position] for position in pending])))
        for _ in range(_MAX_REFITS):
            if not pending:
                break
            plans: dict[int, list[tuple[int, int]]] = {}
            for position in pending:
                budget, text = budgets[position], texts[position]
                if budget < 1:
                    fields = ", ".join(self.meta_fields_to_embed) or "none"
                    raise InvalidDocumentError(
                        f"Document '{documents[position].id}': no passage fits the model's {self.token_limit}-token "
                        f"limit (document prompt {self.prompt!r}, embedded meta fields: {fields}). Embed fewer or "
                        f"shorter meta fields with it."
                    )
                if len(offsets[position]) <= budget:
                    plans[position] = [(0, len(text))]
                else:
                    overlap = min(self.overlap_tokens, budget // 2)
                    plans[position] = plan_passages(text, offsets[position], budget, overlap)
            embedded = [
                self._embedded(texts[position][start:end], documents[position])
                for position in pending
                for start, end in plans[position]
            ]
            counts = iter(self._token_count(embedded))
            still_pending = []
            for position in pending:
                excess = max([next(counts) for _ in plans[position]]) - self.token_limit
                if excess <= 0:
                    text = texts[position]
                    results[position] = [Passage(text[start:end], start, end) for start, end in plans[position]]
                else:
                    # Re-tokenising a cut-out passage can take a few more tokens than its share of the whole text.
                    budgets[position] = min(budgets[position], len(offsets[position])) - excess
                    still_pending.append(position)
            pending = still_pending
        if pending:
            raise InvalidDocumentError(
                f"Document '{documents[pending[0]].id}' could not be cut into passages that fit the model's "
                f"{self.token_limit}-token limit. Split it yourself, or index it with --no-split."
            )
        return results  # type: ignore[return-value]

    def split_documents(self, documents: Iterable[DocumentInput]) -> list[DocumentInput]:
        """Each document as its passages, in order, with the passage meta of :data:`PASSAGE_META_KEYS`.

        A document that fits keeps its id and content; a document without text passes on as it is (with the
        passage meta), so it is never dropped.

        :raises InvalidDocumentError: content that is not text, a meta key of :data:`PASSAGE_META_KEYS` the
            document already has, a passage id that another document also has, or meta fields to embed that
            alone fill the model's limit.
        """
        documents = list(documents)
        for document in documents:
            build_document_text(document, self.meta_fields_to_embed, self.separator)  # refuses non-text content
        pieces = dict(zip((id(document) for document in documents), self.split_texts(documents)))
        return _as_passages(documents, lambda document: pieces[id(document)])

    # ----------------------------------------------------------------------------------------- tokenizing
    def _embedded(self, content: str, document: DocumentInput) -> str:
        passage = DocumentInput(id=document.id, content=content, meta=document.meta)
        return self.prompt + build_document_text(passage, self.meta_fields_to_embed, self.separator)

    def _budgets(self, documents: Sequence[DocumentInput]) -> list[int]:
        """Tokens of text each document's passages may hold: the passage size, less what its embedded meta takes."""
        if not self.meta_fields_to_embed:
            return [self.max_tokens] * len(documents)
        prefixes = [self._embedded("", document) for document in documents]
        unique = list(dict.fromkeys(prefixes))
        taken = dict(zip(unique, self._token_count(unique)))
        return [min(self.max_tokens, self.token_limit - taken[prefix]) for prefix in prefixes]

    def _token_count(self, texts: list[str]) -> list[int]:
        """Tokens of each text with the prompt already in it, special tokens included (as the encoder counts)."""
        if not texts:
            return []
        encoded = self.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=False,
            return_length=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        return [int(length) for length in encoded["length"]]

    def _offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        if not texts:
            return []
        encoded = self.tokenizer(
            texts,
            add_special_tokens=False,
            truncation=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        return [[(int(start), int(end)) for start, end in mapping] for mapping in encoded["offset_mapping"]]


def whole_documents(documents: Iterable[DocumentInput]) -> list[DocumentInput]:
    """Each document as the one passage of itself (indexing without splitting), with the passage meta, so that
    :func:`stale_passage_ids` also replaces passages an earlier, splitting run stored for it.

    :raises InvalidDocumentError: as :meth:`PassageSplitter.split_documents`.
    """

    def whole(document: DocumentInput) -> list[Passage]:
        text = document.content if isinstance(document.content, str) else ""
        return [Passage(text=text, start=0, end=len(text))]

    return _as_passages(documents, whole)


def _as_passages(
    documents: Iterable[DocumentInput], pieces_of: Callable[[DocumentInput], list[Passage]]
) -> list[DocumentInput]:
    passages: list[DocumentInput] = []
    origin: dict[str, str] = {}
    for document in documents:
        taken = [key for key in PASSAGE_META_KEYS if key in document.meta]
        if taken:
            raise InvalidDocumentError(
                f"Document '{document.id}' already has meta {taken}, which passage splitting sets to the "
                f"passage's source and position. Rename those fields."
            )
        pieces = pieces_of(document)
        for index, piece in enumerate(pieces):
            passage_id = document.id if len(pieces) == 1 else f"{document.id}{PASSAGE_ID_SEPARATOR}{index}"
            if passage_id in origin:
                raise InvalidDocumentError(
                    f"Passage id '{passage_id}' of document '{document.id}' is also the id of "
                    f"{'a passage of ' if origin[passage_id] != passage_id else ''}document "
                    f"'{origin[passage_id]}'. Give the documents ids that do not end in "
                    f"'{PASSAGE_ID_SEPARATOR}<number>'."
                )
            origin[passage_id] = document.id
            meta = {
                **document.meta,
                SOURCE_ID_KEY: document.id,
                PASSAGE_INDEX_KEY: index,
                PASSAGE_COUNT_KEY: len(pieces),
                CHAR_START_KEY: piece.start,
                CHAR_END_KEY: piece.end,
            }
            content = document.content if len(pieces) == 1 else piece.text
            passages.append(DocumentInput(id=passage_id, content=content, meta=meta))
    return passages


def plan_passages(text: str, offsets: Sequence[tuple[int, int]], budget: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the passages of ``text``, given its tokens' character ``offsets``.

    Each span covers at most ``budget`` consecutive tokens; the next one starts ``overlap`` tokens before the
    previous one ended (moved forward to a word start). Every token is in at least one span.
    """
    if budget < 1 or not 0 <= overlap <= budget // 2:
        raise ValueError(f"Need budget >= 1 and 0 <= overlap <= budget // 2, got {budget} and {overlap}.")
    count = len(offsets)
    if count == 0:
        return []
    spans: list[tuple[int, int]] = []
    first = 0
    while True:
        if count - first <= budget:
            spans.append((offsets[first][0], max(end for _, end in offsets[first:])))
            return spans
        cut = _best_cut(text, offsets, first, first + budget, min_length=max(1, budget // 2))
        spans.append((offsets[first][0], max(end for _, end in offsets[first:cut])))
        first = _word_start(text, offsets, max(cut - overlap, first + 1), cut)


def _boundary_quality(text: str, offsets: Sequence[tuple[int, int]], position: int) -> int:
    """How good a place the boundary before token ``position`` is to end a passage (-1: inside a character)."""
    previous_end, start = offsets[position - 1][1], offsets[position][0]
    if start < previous_end:
        return -1
    gap = text[previous_end:start]
    if "\n" in gap:
        line = text[text.rfind("\n", 0, previous_end) + 1 : previous_end]
        if _HEADING.match(line):
            return _WORD  # a heading belongs with the text under it
        if _HEADING.match(text[start : start + 8]):
            return _SECTION
    if _PARAGRAPH_BREAK.search(gap):
        return _PARAGRAPH
    if "\n" in gap or (gap and previous_end > 0 and text[previous_end - 1] in _SENTENCE_END):
        return _SENTENCE
    return _WORD if gap else _INSIDE_WORD


def _best_cut(text: str, offsets: Sequence[tuple[int, int]], first: int, last: int, min_length: int) -> int:
    """The token index to end a passage that starts at ``first`` before, at most ``last``."""
    best, best_quality = last, -2
    for position in range(last, first + min_length - 1, -1):
        quality = _boundary_quality(text, offsets, position)
        if quality > best_quality:
            best, best_quality = position, quality
            if quality == _SECTION:
                break
    if best_quality >= 0:
        return best
    # No clean boundary in the second half: any clean boundary at all, else the hard limit.
    for position in range(first + min_length - 1, first, -1):
        if _boundary_quality(text, offsets, position) >= 0:
            return position
    return last


def _word_start(text: str, offsets: Sequence[tuple[int, int]], position: int, limit: int) -> int:
    """The first token at or after ``position`` (and at most ``limit``) that starts a word; else ``position``."""
    for candidate in range(position, limit + 1):
        if _boundary_quality(text, offsets, candidate) >= _WORD:
            return candidate
    return position


def stale_passage_ids(store: Store, passages: Sequence[DocumentInput], *, group_size: int = 500) -> list[str]:
    """Ids ``store`` holds for the sources of ``passages`` that are not among ``passages`` any more.

    Those are the passages a changed document no longer has (it got shorter, or was cut differently) and the
    whole-document record of a document that is now split (as earlier versions stored it, under its own id).
    Call it after writing ``passages``, then delete what it returns.
    """
    kept = {passage.id for passage in passages}
    by_source: dict[str, int] = {}
    for passage in passages:
        source = passage.meta.get(SOURCE_ID_KEY)
        if isinstance(source, str):
            by_source[source] = by_source.get(source, 0) + 1
    sources = sorted(by_source)
    stale: set[str] = set()
    for begin in range(0, len(sources), group_size):
        group = sources[begin : begin + group_size]
        source_filter = {"field": f"meta.{SOURCE_ID_KEY}", "operator": "in", "value": group}
        # Counting is cheap; list (which reads embeddings) only when something beyond the kept passages is stored.
        if store.count(source_filter) > sum(by_source[source] for source in group):
            stale.update(record.id for record in store.list(source_filter) if record.id not in kept)
    unsplit = [source for source in sources if source not in kept]
    for record_id, record in store.stored_versions(unsplit).items():
        if record.meta.get(SOURCE_ID_KEY, record_id) == record_id:
            stale.add(record_id)
    return sorted(stale)
