"""A BM25 keyword index keyed by a store's row slots: updated in place on write and delete, persisted as arrays.

Tokenisation (the same for documents and queries):

1. the text is lower-cased;
2. words are the matches of ``pattern``, by default ``(?u)\\b\\w\\w+\\b``: runs of two or more Unicode letters,
   digits or underscores (bm25s' and scikit-learn's splitter). Punctuation separates words and is dropped;
   single characters are dropped. Scripts written without spaces (Chinese, Japanese, Thai) come out as one
   word per run of characters, so only whole-run matches are found there: give those texts a ``pattern``
   of your own, or use vector search;
3. stopwords are dropped, compared with the lower-cased word before stemming. ``stopwords`` is a language
   name or code for one of bm25s' lists (``"en"`` by default; ``"de"``, ``"fr"``, ``"es"``, ``"it"``,
   ``"nl"``, ``"pt"``, ``"ru"``, ``"sv"``, ``"no"``, ``"da"``, ``"tr"``, ``"zh"``, ``"ko"``), a list of
   words, or ``None`` for none;
4. each word is reduced by a Snowball stemmer (PyStemmer): ``stemmer`` is a Snowball language name
   (``"english"`` by default, see ``Stemmer.algorithms()``) or ``None`` to keep words as they are.

Scoring is BM25 in Lucene's form (the "lucene" variant of bm25s and of Kamphuis et al. 2020)::

    score(q, d) = sum over query words t of  idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with ``N`` the number of indexed documents, ``|d|`` a document's word count after steps 1-4 and a query
word counted as often as it occurs in the query. Unlike bm25s' own index, which stores scores computed
with the collection statistics of the day it was built (so it must be rebuilt after any change), this
index keeps raw term frequencies and applies ``N``, ``df`` and ``avgdl`` at query time: a write or delete
changes only the rows it touches and the statistics stay exact. bm25s provides the tokenisation defaults
(pattern, stopword lists) and is the reference the tests compare scores with.

Structure: rows are kept in segments (compressed sparse rows of term frequencies, one per write batch),
each with a posting list per term for search. A segment never changes; a slot's current version lives in
exactly one segment (``owner``), so an overwrite or delete only moves the owner and fixes the document
frequencies. When there are more than a few small segments they are merged with each other; they join the
largest one only once they hold a tenth of its postings. So a write costs what it writes (amortised) and no
query rebuilds anything.

A query made only of stopwords, punctuation or words that no document contains matches nothing:
:meth:`KeywordIndex.search` returns empty arrays (no error), as does a search of an empty index.

Example::

    index = KeywordIndex()                                    # English stemming and stopwords
    index.set_rows([0, 1, 2], ["Cats purr.", "Dogs bark at cats.", "Birds sing."])
    slots, scores = index.search("a barking dog", k=2)        # -> array([1]), the BM25 score
    index.clear_rows([1])
    index.save("my-index/keyword")
    index = KeywordIndex.load("my-index/keyword")
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from dual_encoder.errors import ConfigurationError, DualEncoderError

__all__ = ["KeywordConfig", "KeywordIndex", "KeywordIndexError", "keyword_config_of", "tokenize"]

_FORMAT = 1
_CONFIG_FILE = "keyword.json"
# A segment merge happens when the small segments together hold this share of the largest one's postings...
_MERGE_SHARE = 0.1
# ...or when there are more segments than this (each one costs a few numpy calls per query word).
_MAX_SEGMENTS = 8
# Below this many postings in total, merging is always cheap: merge on every write.
_SMALL_INDEX = 20_000

_STOPWORD_LISTS = {
    "en": "STOPWORDS_EN",
    "english": "STOPWORDS_EN",
    "en_plus": "STOPWORDS_EN_PLUS",
    "english_plus": "STOPWORDS_EN_PLUS",
    "de": "STOPWORDS_GERMAN",
    "german": "STOPWORDS_GERMAN",
    "nl": "STOPWORDS_DUTCH",
    "dutch": "STOPWORDS_DUTCH",
    "fr": "STOPWORDS_FRENCH",
    "french": "STOPWORDS_FRENCH",
    "es": "STOPWORDS_SPANISH",
    "spanish": "STOPWORDS_SPANISH",
    "pt": "STOPWORDS_PORTUGUESE",
    "portuguese": "STOPWORDS_PORTUGUESE",
    "it": "STOPWORDS_ITALIAN",
    "italian": "STOPWORDS_ITALIAN",
    "ru": "STOPWORDS_RUSSIAN",
    "russian": "STOPWORDS_RUSSIAN",
    "sv": "STOPWORDS_SWEDISH",
    "swedish": "STOPWORDS_SWEDISH",
    "no": "STOPWORDS_NORWEGIAN",
    "norwegian": "STOPWORDS_NORWEGIAN",
    "zh": "STOPWORDS_CHINESE",
    "chinese": "STOPWORDS_CHINESE",
    "tr": "STOPWORDS_TURKISH",
    "turkish": "STOPWORDS_TURKISH",
    "ko": "STOPWORDS_KOREAN",
    "korean": "STOPWORDS_KOREAN",
    "da": "STOPWORDS_DANISH",
    "danish": "STOPWORDS_DANISH",
}


class KeywordIndexError(DualEncoderError):
    """A keyword index on disk is missing, damaged or of another format."""


@dataclass(frozen=True)
class KeywordConfig:
    """How text becomes words and how words are scored (see the module docstring).

    :param stemmer: A Snowball language for PyStemmer (``"english"``), or ``None`` for no stemming.
    :param stopwords: A stopword list name or code (``"en"``), a list of words, or ``None``.
    :param pattern: The regular expression whose matches are the words.
    :param k1: BM25 term-frequency saturation.
    :param b: BM25 length normalisation (0: none, 1: full).

    ``k1`` = 0.9 and ``b`` = 0.4 (Anserini's defaults) scored best of a small grid on a dev slice of SciFact
    train queries; Lucene's and Elasticsearch's 1.2 / 0.75 came within a few thousandths (see
    benchmarks/README.md, "Hybrid").
    """

    stemmer: str | None = "english"
    stopwords: str | tuple[str, ...] | None = "en"
    pattern: str = r"(?u)\b\w\w+\b"
    k1: float = 0.9
    b: float = 0.4

    def __post_init__(self) -> None:
        if isinstance(self.stopwords, list):
            object.__setattr__(self, "stopwords", tuple(self.stopwords))
        if not (isinstance(self.k1, int | float) and self.k1 >= 0 and math.isfinite(self.k1)):
            raise ConfigurationError(f"k1 must be a finite number >= 0, got {self.k1!r}. 0.9 to 1.5 are usual.")
        if not (isinstance(self.b, int | float) and 0 <= self.b <= 1):
            raise ConfigurationError(f"b must be between 0 and 1, got {self.b!r}. 0.4 to 0.75 are usual.")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(self.stopwords, tuple):
            data["stopwords"] = list(self.stopwords)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeywordConfig:
        return cls(**data)


def keyword_config_of(value: KeywordConfig | Mapping[str, Any] | None) -> KeywordConfig | None:
    """A checked :class:`KeywordConfig` from itself or its dict (YAML, JSON); ``None`` stays ``None``.

    :raises ConfigurationError: unknown fields, or a stemmer, stopword list or pattern that does not exist.
    """
    if value is None:
        return None
    if isinstance(value, KeywordConfig):
        _Tokenizer(value)  # an unknown stemmer or stopword list fails here, not at the first keyword search
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"Keyword settings must be a KeywordConfig or a dict of its fields, got {type(value).__name__}."
        )
    names = [item.name for item in fields(KeywordConfig)]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ConfigurationError(f"Unknown keyword settings {unknown}; the fields are {names}.")
    return keyword_config_of(KeywordConfig.from_dict(dict(value)))


class _Tokenizer:
    """Text -> stems, with a cache from each distinct word to its stem (or ``None`` for a stopword)."""

    def __init__(self, config: KeywordConfig) -> None:
        try:
            self._split = re.compile(config.pattern).findall
        except re.error as error:
            raise ConfigurationError(
                f"The keyword pattern {config.pattern!r} is not a valid regular expression: {error}."
            ) from error
        self._stopwords = frozenset(word.lower() for word in _stopword_list(config.stopwords))
        self._stem = _stemmer(config.stemmer)
        self._cache: dict[str, str | None] = {}
        self._lock = threading.Lock()

    @property
    def split(self) -> Callable[[str], list[str]]:
        return self._split

    def stem_of(self, word: str) -> str | None:
        """The stem of a lower-cased word, or ``None`` for a stopword."""
        if word in self._stopwords:
            return None
        return self._stem(word) if self._stem else word

    def words(self, text: str | None) -> list[str]:
        if not text:
            return []
        cache = self._cache
        out = []
        for word in self._split(text.lower()):
            stem = cache.get(word, "")
            if stem == "":
                stem = self.stem_of(word)
                if len(cache) < 100_000:  # bounded: queries are a stream of words that must not grow memory
                    cache[word] = stem
            if stem:
                out.append(stem)
        return out


def _stopword_list(stopwords: str | Sequence[str] | None) -> Sequence[str]:
    if stopwords is None:
        return ()
    if isinstance(stopwords, str):
        name = _STOPWORD_LISTS.get(stopwords.lower())
        if name is None:
            raise ConfigurationError(
                f"Unknown stopword list {stopwords!r}. Use one of {sorted(set(_STOPWORD_LISTS))}, a list of words, "
                f"or None for no stopwords."
            )
        import bm25s.stopwords

        return getattr(bm25s.stopwords, name)
    return list(stopwords)


def _stemmer(language: str | None) -> Callable[[str], str] | None:
    if language is None:
        return None
    import Stemmer

    try:
        return Stemmer.Stemmer(language).stemWord
    except KeyError as error:
        raise ConfigurationError(
            f"No Snowball stemmer for {language!r}. Use one of {sorted(Stemmer.algorithms())}, or None for no stemming."
        ) from error


def tokenize(text: str | None, config: KeywordConfig | None = None) -> list[str]:
    """The words (stems) ``text`` is indexed and searched by under ``config`` (defaults: English)."""
    return _Tokenizer(config or KeywordConfig()).words(text)


@dataclass
class _Segment:
    """Immutable rows: ``slots[r]`` holds terms ``terms[indptr[r]:indptr[r+1]]`` with counts ``tf``; the
    posting lists (by term: slots and counts) are built on the first search."""

    slots: np.ndarray  # int64, one per row
    indptr: np.ndarray  # int64, rows + 1
    terms: np.ndarray  # int32
    tf: np.ndarray  # float32
    postings: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    dead: int = 0  # rows whose slot now lives elsewhere or was cleared

    @property
    def size(self) -> int:
        return int(self.tf.shape[0])

    def posting_lists(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr, slots, tf)`` by term; terms beyond ``len(indptr) - 1`` do not occur in the segment."""
        if self.postings is None:
            width = int(self.terms.max()) + 1 if self.size else 1
            shape = (self.slots.shape[0], width)
            rows = scipy.sparse.csr_matrix((self.tf, self.terms, self.indptr), shape=shape).tocsc()
            rows.sort_indices()
            self.postings = (
                rows.indptr.astype(np.int64),
                self.slots[rows.indices],
                rows.data.astype(np.float32),
            )
        return self.postings


class KeywordIndex:
    """A BM25 index over texts stored at integer slots (a store's rows). Thread-safe.

    :param config: Tokenisation and BM25 parameters (English stemming and stopwords by default).
    """

    def __init__(self, config: KeywordConfig | None = None) -> None:
        self.config = config or KeywordConfig()
        self._tokenizer = _Tokenizer(self.config)
        self._lock = threading.RLock()
        self._vocabulary: dict[str, int] = {}  # stem -> term id
        self._word_terms: dict[str, int] = {}  # lower-cased word -> term id, -1 for a stopword
        self._segments: dict[int, _Segment] = {}
        self._next_segment = 0
        self._owner = np.full(0, -1, dtype=np.int32)  # segment holding each slot's current version, -1: none
        self._row = np.zeros(0, dtype=np.int64)  # the slot's row in that segment
        self._length = np.zeros(0, dtype=np.float32)  # words per document
        self._df = np.zeros(0, dtype=np.int64)  # documents per term
        self._documents = 0
        self._total_length = 0.0
        self._norm_cache: np.ndarray | None = None
        #: A caller-chosen tag saved with the index (e.g. the store generation it reflects).
        self.revision: Any = None

    # ----------------------------------------------------------------------------------------- info
    def __len__(self) -> int:
        """How many slots hold a document (empty texts count: they take part in N and avgdl)."""
        return self._documents

    @property
    def vocabulary_size(self) -> int:
        return len(self._vocabulary)

    def tokenize(self, text: str | None) -> list[str]:
        """The words ``text`` is indexed and searched by."""
        return self._tokenizer.words(text)

    # -------------------------------------------------------------------------------------- writing
    def set_rows(self, slots: Sequence[int] | np.ndarray, texts: Sequence[str | None]) -> None:
        """Index ``texts[i]`` at ``slots[i]``, replacing whatever the slot held. ``None`` indexes an empty text.

        A slot repeated in one call keeps its last text.
        """
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        if slots.shape[0] != len(texts):
            raise ConfigurationError(f"set_rows got {slots.shape[0]} slots but {len(texts)} texts; pass one per slot.")
        if slots.shape[0] == 0:
            return
        if int(slots.min()) < 0:
            raise ConfigurationError("Slots are non-negative integers.")
        _, last = np.unique(slots[::-1], return_index=True)
        keep = np.sort(slots.shape[0] - 1 - last)
        if keep.shape[0] != slots.shape[0]:
            slots, texts = slots[keep], [texts[i] for i in keep]
        with self._lock:
            segment = self._segment_of(slots, texts)
            self._grow(int(slots.max()) + 1)
            self._forget(slots)
            sid = self._next_segment
            self._next_segment += 1
            self._segments[sid] = segment
            self._owner[slots] = sid
            self._row[slots] = np.arange(slots.shape[0])
            lengths = _row_sums(segment.indptr, segment.tf)
            self._length[slots] = lengths
            self._norm_cache = None
            self._df += np.bincount(segment.terms, minlength=self._df.shape[0])
            self._documents += slots.shape[0]
            self._total_length += float(lengths.sum())
            self._maybe_merge()

    def clear_rows(self, slots: Sequence[int] | np.ndarray) -> None:
        """Remove the documents at ``slots`` (slots that hold none are ignored)."""
        slots = np.unique(np.asarray(slots, dtype=np.int64).reshape(-1))
        with self._lock:
            slots = slots[(slots >= 0) & (slots < self._owner.shape[0])]
            self._forget(slots)
            self._maybe_merge()

    def clear(self) -> None:
        """Remove every document (the vocabulary is kept)."""
        with self._lock:
            self._segments.clear()
            self._owner[:] = -1
            self._length[:] = 0
            self._df[:] = 0
            self._documents = 0
            self._total_length = 0.0
            self._norm_cache = None

    def _segment_of(self, slots: np.ndarray, texts: Sequence[str | None]) -> _Segment:
        # The hot loop of indexing: one dict lookup per word, from the raw (lower-cased) word straight to its
        # term id (-1 for a stopword); words seen for the first time go through the tokenizer once.
        split = self._tokenizer.split
        known = self._word_terms
        flat: list[int] = []
        counts = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            if not text:
                continue
            words = split(text.lower())
            try:
                ids = [known[word] for word in words]
            except KeyError:
                for word in words:
                    if word not in known:
                        known[word] = self._term_of_word(word)
                ids = [known[word] for word in words]
            flat.extend(ids)
            counts[row] = len(ids)
        terms = np.fromiter(flat, dtype=np.int64, count=len(flat))
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), counts)
        kept = terms >= 0
        keys, tf = np.unique((rows[kept] << 32) | terms[kept], return_counts=True)
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys >> 32, minlength=len(texts)), out=indptr[1:])
        return _Segment(
            slots=slots.copy(), indptr=indptr, terms=(keys & 0xFFFFFFFF).astype(np.int32), tf=tf.astype(np.float32)
        )

    def _term_of_word(self, word: str) -> int:
        stem = self._tokenizer.stem_of(word)
        if stem is None:
            return -1
        term = self._vocabulary.get(stem)
        if term is None:
            term = self._vocabulary[stem] = len(self._vocabulary)
        return term

    def _grow(self, size: int) -> None:
        if size > self._owner.shape[0]:
            capacity = max(size, 2 * self._owner.shape[0], 1024)
            self._owner = _grown(self._owner, capacity, -1)
            self._row = _grown(self._row, capacity, 0)
            self._length = _grown(self._length, capacity, 0)
        if len(self._vocabulary) > self._df.shape[0]:
            self._df = _grown(self._df, max(len(self._vocabulary), 2 * self._df.shape[0]), 0)

    def _forget(self, slots: np.ndarray) -> None:
        """Take the current versions at ``slots`` out of the statistics and mark their rows dead."""
        if slots.shape[0] == 0:
            return
        self._norm_cache = None
        owners = self._owner[slots]
        held = owners >= 0
        slots, owners = slots[held], owners[held]
        for sid in np.unique(owners).tolist():
            segment = self._segments[sid]
            rows = self._row[slots[owners == sid]]
            positions = _ranges(segment.indptr, rows)
            self._df -= np.bincount(segment.terms[positions], minlength=self._df.shape[0])
            segment.dead += rows.shape[0]
            if segment.dead == segment.slots.shape[0]:
                del self._segments[sid]
        self._documents -= slots.shape[0]
        self._total_length -= float(self._length[slots].sum())
        self._owner[slots] = -1
        self._length[slots] = 0

    def _maybe_merge(self) -> None:
        # Dead rows cost query time (their postings are read, then masked out).
        if sum(s.dead for s in self._segments.values()) > max(1000, self._documents // 2):
            self._merge(list(self._segments))
        if len(self._segments) <= 1:
            return
        by_size = sorted(self._segments, key=lambda sid: self._segments[sid].size, reverse=True)
        largest = self._segments[by_size[0]].size
        small = sum(self._segments[sid].size for sid in by_size[1:])
        if largest + small <= _SMALL_INDEX or small >= _MERGE_SHARE * largest:
            self._merge(by_size)
        elif len(by_size) > _MAX_SEGMENTS:
            # Too many small segments: merge them with each other, not into the large one (which would cost
            # a rewrite of every posting for a few new documents).
            self._merge(by_size[1:])

    def _merge(self, sids: list[int]) -> None:
        """Rewrite the live rows of segments ``sids`` as one segment."""
        parts_slots, parts_terms, parts_tf, parts_lengths = [], [], [], []
        for sid in sids:
            segment = self._segments.pop(sid)
            live = segment.slots[self._owner[segment.slots] == sid]
            rows = self._row[live]
            positions = _ranges(segment.indptr, rows)
            parts_slots.append(live)
            parts_terms.append(segment.terms[positions])
            parts_tf.append(segment.tf[positions])
            parts_lengths.append(segment.indptr[rows + 1] - segment.indptr[rows])
        slots = np.concatenate(parts_slots) if parts_slots else np.zeros(0, np.int64)
        if not slots.shape[0]:
            return
        indptr = np.zeros(slots.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.concatenate(parts_lengths), out=indptr[1:])
        sid = self._next_segment
        self._next_segment += 1
        self._segments[sid] = _Segment(
            slots=slots, indptr=indptr, terms=np.concatenate(parts_terms), tf=np.concatenate(parts_tf)
        )
        self._owner[slots] = sid
        self._row[slots] = np.arange(slots.shape[0])

    # -------------------------------------------------------------------------------------- reading
    def search(self, text: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best-scoring slots for ``text`` (int64) and their BM25 scores (float32), best first.

        Only documents that contain at least one query word are returned, so fewer than ``k`` may come back;
        a query of only stopwords or punctuation returns empty arrays. Ties are broken by lower slot.

        :param allowed: A boolean mask over slots (e.g. the store's filter mask); slots beyond its length,
            or where it is ``False``, are not returned. ``None``: every slot.
        """
        if k <= 0:
            raise ConfigurationError(f"k must be a positive integer, got {k!r}.")
        query = self._tokenizer.words(text)
        with self._lock:
            terms = [self._vocabulary.get(word) for word in query]
            counted: dict[int, int] = {}
            for term in terms:
                if term is not None and term < self._df.shape[0] and self._df[term] > 0:
                    counted[term] = counted.get(term, 0) + 1
            if not counted or self._documents == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            scores = self._scores(counted)
        # Every BM25 contribution is positive and slots without a current document get none, so the
        # matching documents are exactly the positive scores.
        candidates = np.flatnonzero(scores)
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool).reshape(-1)
            candidates = candidates[candidates < allowed.shape[0]]
            candidates = candidates[allowed[candidates]]
        values = scores[candidates]
        if candidates.shape[0] > k:
            kth = np.partition(values, candidates.shape[0] - k)[candidates.shape[0] - k]
            keep = values >= kth  # ties at the cut all stay, so the slot order below decides between them
            candidates, values = candidates[keep], values[keep]
        order = np.lexsort((candidates, -values))[:k]
        return candidates[order].astype(np.int64), values[order].astype(np.float32)

    def _scores(self, counted: dict[int, int]) -> np.ndarray:
        n = float(self._documents)
        scores = np.zeros(self._owner.shape[0], dtype=np.float32)
        norms = self._norms()
        owner = self._owner
        for sid, segment in self._segments.items():
            indptr, rows, tfs = segment.posting_lists()
            for term, weight in counted.items():
                if term + 1 >= indptr.shape[0]:
                    continue
                start, end = indptr[term], indptr[term + 1]
                if start == end:
                    continue
                slots, tf = rows[start:end], tfs[start:end]
                if segment.dead:
                    current = owner[slots] == sid
                    slots, tf = slots[current], tf[current]
                df = float(self._df[term])
                idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5)) * weight
                scores[slots] += np.float32(idf) * tf / (tf + norms[slots])
        return scores

    def _norms(self) -> np.ndarray:
        """``k1 * (1 - b + b * |d| / avgdl)`` per slot, kept until the next write."""
        if self._norm_cache is None or self._norm_cache.shape != self._length.shape:
            average = self._total_length / self._documents if self._documents and self._total_length > 0 else 1.0
            k1, b = self.config.k1, self.config.b
            self._norm_cache = (k1 * (1.0 - b + b * (self._length / np.float32(average)))).astype(np.float32)
        return self._norm_cache

    # ------------------------------------------------------------------------------------ persisting
    def save(self, directory: str | Path) -> None:
        """Write the index into ``directory`` (created if needed): ``keyword.json`` and a few ``.npy`` arrays.

        The arrays of a save get fresh names and ``keyword.json`` is replaced last, atomically, so a crash
        leaves the previous save readable. Older arrays are then deleted.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if len(self._segments) > 1 or any(segment.dead for segment in self._segments.values()):
                self._merge(list(self._segments))
            segment = next(iter(self._segments.values()), None)
            previous = _read_config(directory) if (directory / _CONFIG_FILE).exists() else None
            generation = int(previous["generation"]) + 1 if previous else 1
            arrays = {
                "slots": segment.slots if segment else np.zeros(0, np.int64),
                "indptr": segment.indptr if segment else np.zeros(1, np.int64),
                "terms": segment.terms if segment else np.zeros(0, np.int32),
                "tf": segment.tf if segment else np.zeros(0, np.float32),
            }
            names = {}
            for name, array in arrays.items():
                names[name] = f"keyword-{generation}-{name}.npy"
                with open(directory / names[name], "wb") as handle:
                    np.save(handle, array, allow_pickle=False)
                    handle.flush()
                    os.fsync(handle.fileno())
            terms: list[str | None] = [None] * len(self._vocabulary)
            for word, term in self._vocabulary.items():
                terms[term] = word
            info = {
                "format": _FORMAT,
                "generation": generation,
                "config": self.config.to_dict(),
                "arrays": names,
                "vocabulary": terms,
                "revision": self.revision,
            }
            temporary = directory / f".{_CONFIG_FILE}.tmp"
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(info, handle, ensure_ascii=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, directory / _CONFIG_FILE)
        for path in directory.glob("keyword-*-*.npy"):
            if path.name not in names.values():
                path.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | Path) -> KeywordIndex:
        """Read an index written by :meth:`save`.

        :raises KeywordIndexError: nothing saved there, a damaged file, or another format (rebuild the index
            from the documents' texts with :meth:`set_rows`).
        """
        directory = Path(directory)
        info = _read_config(directory)
        try:
            index = cls(KeywordConfig.from_dict(info["config"]))
            arrays = {name: np.load(directory / file, allow_pickle=False) for name, file in info["arrays"].items()}
            index._vocabulary = {word: term for term, word in enumerate(info["vocabulary"])}
            index.revision = info.get("revision")
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise KeywordIndexError(
                f"The keyword index in '{directory}' cannot be read ({error}). Delete the folder and index the "
                f"documents again."
            ) from error
        slots, indptr, terms, tf = arrays["slots"], arrays["indptr"], arrays["terms"], arrays["tf"]
        if indptr.shape[0] != slots.shape[0] + 1 or terms.shape != tf.shape or int(indptr[-1]) != terms.shape[0]:
            raise KeywordIndexError(
                f"The keyword index in '{directory}' is inconsistent. Delete the folder and index the documents again."
            )
        index._grow(int(slots.max()) + 1 if slots.shape[0] else 0)
        if slots.shape[0]:
            segment = _Segment(slots=slots.astype(np.int64), indptr=indptr, terms=terms, tf=tf)
            index._segments[0] = segment
            index._next_segment = 1
            index._owner[slots] = 0
            index._row[slots] = np.arange(slots.shape[0])
            lengths = _row_sums(indptr, tf)
            index._length[slots] = lengths
            index._df = np.bincount(terms, minlength=len(index._vocabulary)).astype(np.int64)
            index._documents = int(slots.shape[0])
            index._total_length = float(lengths.sum())
        return index


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / _CONFIG_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise KeywordIndexError(
            f"No keyword index in '{directory}' ({_CONFIG_FILE} is missing). Build one with KeywordIndex().set_rows()."
        ) from error
    except (OSError, ValueError) as error:
        raise KeywordIndexError(
            f"The keyword index file '{path}' is damaged ({error}). Delete the folder and index the documents again."
        ) from error
    if not isinstance(info, dict) or info.get("format") != _FORMAT:
        raise KeywordIndexError(
            f"The keyword index in '{directory}' has format {info.get('format') if isinstance(info, dict) else '?'}; "
            f"this version reads format {_FORMAT}. Delete the folder and index the documents again."
        )
    return info


def _grown(array: np.ndarray, size: int, fill: Any) -> np.ndarray:
    grown = np.full(size, fill, dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


def _row_sums(indptr: np.ndarray, values: np.ndarray) -> np.ndarray:
    rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
    return np.bincount(rows, weights=values, minlength=indptr.shape[0] - 1).astype(np.float32)


def _ranges(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The concatenated positions ``indptr[r]:indptr[r+1]`` of every row in ``rows``."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return np.arange(total, dtype=np.int64) + offsets
