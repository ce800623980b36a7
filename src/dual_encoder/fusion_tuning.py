"""Fitting the hybrid fusion weight to an encoder on a dev slice, and recording it in the model folder.

How much the vector side should count in a hybrid search depends on the encoder: a fine-tuned model that beats
BM25 by a wide margin wants a larger share than the untrained one the library defaults were chosen for, and a
fusion that gives it too little ranks below the dense model alone. :func:`choose_fusion_weight` scores a dev
slice once with each side (one encoding of the dev corpus, one BM25 index), then fuses the two candidate lists
for every weight of a grid and both fusion methods, exactly as :func:`dual_encoder.hybrid.hybrid_search` does,
and keeps the best by dev nDCG@10.

It never chooses a fusion that loses to its stronger input: when no fused ranking beats the better of dense
and BM25 on the dev slice, it records the weight that reduces the fusion to that input (``1.0``: dense only,
``0.0``: BM25 only) and says so.

The choice is stored as ``hybrid_fusion.json`` in the model folder (:func:`write_fusion_choice`, written
atomically). It is not part of the encoder fingerprint: the weight changes how two result lists are merged,
not the embedding space, so indexes stay valid. :func:`resolve_fusion` is what the hybrid consumers call: an
explicit weight wins, else the weight recorded with the model, else the documented defaults
(:data:`dual_encoder.hybrid.DEFAULT_FUSION`, :data:`dual_encoder.hybrid.DEFAULT_WEIGHT`).

Example::

    choice = choose_fusion_weight(encoder, dev_queries, dev_corpus, dev_qrels)
    print(choice.message())
    write_fusion_choice("models/scifact", choice)
    resolve_fusion("models/scifact", fusion=None, weight=None)   # FusionSetting(fusion=..., weight=..., source="model")
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dual_encoder.errors import ConfigurationError
from dual_encoder.fusion import FUSION_METHODS, RRF_K, FusionMethod, fuse_scores, validate_fusion
from dual_encoder.keyword import KeywordConfig, KeywordIndex

if TYPE_CHECKING:
    from dual_encoder.encoder import DualEncoder

__all__ = [
    "FUSION_FILE",
    "WEIGHT_GRID",
    "FusionChoice",
    "FusionRecordError",
    "FusionSetting",
    "choose_fusion_weight",
    "model_folder",
    "read_fusion_choice",
    "resolve_fusion",
    "write_fusion_choice",
]

logger = logging.getLogger(__name__)

#: The file in a model folder that records the fusion chosen for that model.
FUSION_FILE = "hybrid_fusion.json"
_FORMAT = 1
#: Vector-side shares tried: 0 (BM25 only) to 1 (dense only) in steps of 0.05.
WEIGHT_GRID: tuple[float, ...] = tuple(round(step * 0.05, 2) for step in range(21))
_METRIC = "ndcg@10"
_DEPTH = 10
_QUERY_BLOCK = 256


class FusionRecordError(ConfigurationError):
    """A model folder's ``hybrid_fusion.json`` cannot be read or holds values that make no sense."""


@dataclass(frozen=True)
class FusionChoice:
    """The fusion chosen for one encoder on a dev slice, and the dev figures behind it.

    ``fusion`` and ``weight`` are what hybrid search should use. ``dev`` holds mean dev nDCG@10 of ``dense``,
    ``keyword`` and the chosen ``fused`` ranking, the paired ``gain`` of the fused ranking over the stronger input
    and its ``standard_error``. ``fell_back_to`` is ``"dense"`` or ``"keyword"`` when no fusion beat that input on
    dev (``weight`` then reduces the fusion to it), else ``None``. ``curve`` maps each method to
    ``{weight: dev nDCG@10}`` for the whole grid.
    """

    fusion: FusionMethod
    weight: float
    dev: dict[str, float]
    dev_queries: int
    dev_documents: int
    candidates: int
    rrf_k: int = RRF_K
    stronger_input: str = "dense"
    fell_back_to: str | None = None
    keyword: dict[str, Any] = field(default_factory=lambda: KeywordConfig().to_dict())
    curve: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Where the dev slice came from and which model was scored (free-form, for the reader).
    source: dict[str, Any] = field(default_factory=dict)

    def message(self) -> str:
        """One plain sentence: the weight chosen and why."""
        figures = f"dev nDCG@10 dense {self.dev['dense']:.4f}, BM25 {self.dev['keyword']:.4f}"
        if self.fell_back_to is not None:
            side = "dense" if self.fell_back_to == "dense" else "BM25"
            return (
                f"Hybrid fusion: no fusion beat {side} alone on the dev slice ({figures}; best fusion "
                f"gain {self.dev['gain']:+.4f}), so the recorded weight is {self.weight:g} ({side} only) with "
                f"{self.fusion} fusion; {self.dev_queries} queries over {self.dev_documents:,} documents."
            )
        return (
            f"Hybrid fusion: {self.fusion} with weight {self.weight:g} (the vector side's share); {figures}, fused "
            f"{self.dev['fused']:.4f} (gain over {self.stronger_input} {self.dev['gain']:+.4f} ± "
            f"{self.dev['standard_error']:.4f}); {self.dev_queries} queries over {self.dev_documents:,} documents."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "fusion": self.fusion,
            "weight": self.weight,
            "candidates": self.candidates,
            "rrf_k": self.rrf_k,
            "metric": _METRIC,
            "dev": dict(self.dev),
            "dev_queries": self.dev_queries,
            "dev_documents": self.dev_documents,
            "stronger_input": self.stronger_input,
            "fell_back_to": self.fell_back_to,
            "keyword": dict(self.keyword),
            "curve": {method: dict(points) for method, points in self.curve.items()},
            "source": dict(self.source),
            "message": self.message(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionChoice:
        """The choice recorded in ``data`` (as written by :meth:`to_dict`).

        :raises ConfigurationError: a missing or invalid field, naming it.
        """
        if data.get("format") != _FORMAT:
            raise ConfigurationError(f"format is {data.get('format')!r}, this version reads format {_FORMAT}.")
        missing = [
            key for key in ("fusion", "weight", "candidates", "dev", "dev_queries", "dev_documents") if key not in data
        ]
        if missing:
            raise ConfigurationError(f"missing field(s) {missing}.")
        validate_fusion(data["fusion"], data["weight"], data.get("rrf_k", RRF_K))
        return cls(
            fusion=data["fusion"],
            weight=float(data["weight"]),
            dev={key: float(value) for key, value in dict(data["dev"]).items()},
            dev_queries=int(data["dev_queries"]),
            dev_documents=int(data["dev_documents"]),
            candidates=int(data["candidates"]),
            rrf_k=int(data.get("rrf_k", RRF_K)),
            stronger_input=str(data.get("stronger_input", "dense")),
            fell_back_to=data.get("fell_back_to"),
            keyword=dict(data.get("keyword") or {}),
            curve={method: dict(points) for method, points in dict(data.get("curve") or {}).items()},
            source=dict(data.get("source") or {}),
        )


def choose_fusion_weight(
    encoder: DualEncoder,
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    keyword_config: KeywordConfig | None = None,
    candidates: int | None = None,
    weights: Sequence[float] = WEIGHT_GRID,
    methods: Sequence[str] = FUSION_METHODS,
    rrf_k: int = RRF_K,
    corpus_vectors: np.ndarray | None = None,
    progress_bar: bool = True,
    source: Mapping[str, Any] | None = None,
) -> FusionChoice:
    """Choose the fusion method and weight for ``encoder`` by dev nDCG@10.

    Each side ranks the whole ``corpus`` once: dense by the encoder's similarity, BM25 by a
    :class:`~dual_encoder.keyword.KeywordIndex` with ``keyword_config``. Each keeps its best ``candidates``
    per query, and every (method, weight) pair fuses those lists as hybrid search does and is scored at depth 10.

    :param queries: Dev query id -> text (non-empty). Queries without a positive judgement are not scored.
    :param corpus: Document id -> text (non-empty): the documents both sides search.
    :param qrels: Query id -> document id -> graded relevance (> 0 relevant), as in BEIR.
    :param keyword_config: BM25 tokenisation and parameters (default: the library's).
    :param candidates: Documents per side before fusing (default: :data:`dual_encoder.hybrid.DEFAULT_CANDIDATES`).
    :param weights: The vector-side shares to try (default: 0 to 1 in steps of 0.05).
    :param methods: Fusion methods to try (``"weighted"``, ``"rrf"``); ties go to the one listed first.
    :param corpus_vectors: The corpus already encoded with ``encoder``'s document tower, in ``corpus`` order
        (skips the one encoding pass).
    :param source: Free-form notes on where the dev slice came from, kept in the record.
    :returns: The choice; see :class:`FusionChoice`.
    :raises ConfigurationError: no query with a positive judgement, an empty text, a bad weight or method.
    """
    from dual_encoder.hybrid import DEFAULT_CANDIDATES, DEFAULT_FUSION

    per_side = DEFAULT_CANDIDATES if candidates is None else candidates
    if isinstance(per_side, bool) or not isinstance(per_side, int) or per_side < _DEPTH:
        raise ConfigurationError(f"candidates must be an integer of at least {_DEPTH}, got {candidates!r}.")
    if not weights or not methods:
        raise ConfigurationError("weights and methods must each name at least one value to try.")
    for method in methods:
        for weight in weights:
            validate_fusion(method, weight, rrf_k)
    judged = {
        query: {doc: grade for doc, grade in qrels.get(query, {}).items() if grade > 0}
        for query in queries
        if any(grade > 0 for grade in qrels.get(query, {}).values())
    }
    if not judged:
        raise ConfigurationError("None of the dev queries has a relevant document in qrels; nothing can be scored.")
    if len(judged) < len(queries):
        logger.warning(
            "%d of %d dev queries have no relevant document in qrels and are not scored.",
            len(queries) - len(judged),
            len(queries),
        )
    query_ids = list(judged)
    document_ids = list(corpus)
    empty = [doc for doc in document_ids if not isinstance(corpus[doc], str) or not corpus[doc].strip()]
    empty_queries = [query for query in query_ids if not isinstance(queries[query], str) or not queries[query].strip()]
    if empty or empty_queries or not document_ids:
        raise ConfigurationError(
            f"The dev slice needs text for every query and document: {len(empty_queries)} empty query(ies) "
            f"{empty_queries[:5]}, {len(empty)} empty document(s) {empty[:5]}, {len(document_ids)} document(s)."
        )
    dense = _dense_rankings(encoder, queries, query_ids, corpus, document_ids, per_side, corpus_vectors, progress_bar)
    keyword = _keyword_rankings(queries, query_ids, corpus, document_ids, per_side, keyword_config)
    dense_scores = _ndcg([[doc for doc, _ in ranking] for ranking in dense], query_ids, judged)
    keyword_scores = _ndcg([[doc for doc, _ in ranking] for ranking in keyword], query_ids, judged)
    stronger, stronger_scores = (
        ("dense", dense_scores) if dense_scores.mean() >= keyword_scores.mean() else ("keyword", keyword_scores)
    )

    curve: dict[str, dict[str, float]] = {}
    per_query: dict[tuple[str, float], np.ndarray] = {}
    for method in methods:
        curve[method] = {}
        for weight in weights:
            fused = [
                [doc for doc, _ in fuse_scores(v, k, method=method, weight=weight, rrf_k=rrf_k)[:_DEPTH]]  # type: ignore[arg-type]
                for v, k in zip(dense, keyword)
            ]
            per_query[method, weight] = _ndcg(fused, query_ids, judged)
            curve[method][f"{weight:g}"] = float(per_query[method, weight].mean())
    top = max(scores.mean() for scores in per_query.values())
    # Of the best settings, the first method's; of its weights, the middle one: the centre of a plateau of equal
    # scores is the choice least likely to sit on the edge of a drop.
    method = next(m for m in methods if any(per_query[m, w].mean() == top for w in weights))
    tied = sorted(w for w in weights if per_query[method, w].mean() == top)
    weight = float(tied[(len(tied) - 1) // 2])
    fused_scores = per_query[method, weight]
    differences = fused_scores - stronger_scores
    gain = float(differences.mean())
    error = float(differences.std(ddof=1) / math.sqrt(len(differences))) if len(differences) > 1 else 0.0
    fell_back_to = None
    if gain <= 0:
        # Fusion does not help here: record the setting that returns the stronger input's own ranking.
        fell_back_to, method, weight = stronger, DEFAULT_FUSION, (1.0 if stronger == "dense" else 0.0)
    return FusionChoice(
        fusion=method,  # type: ignore[arg-type]
        weight=weight,
        dev={
            "dense": float(dense_scores.mean()),
            "keyword": float(keyword_scores.mean()),
            "fused": float(top),
            "gain": gain,
            "standard_error": error,
        },
        dev_queries=len(query_ids),
        dev_documents=len(document_ids),
        candidates=per_side,
        rrf_k=rrf_k,
        stronger_input=stronger,
        fell_back_to=fell_back_to,
        keyword=(keyword_config or KeywordConfig()).to_dict(),
        curve=curve,
        source=dict(source or {}),
    )


def _dense_rankings(
    encoder: DualEncoder,
    queries: Mapping[str, str],
    query_ids: list[str],
    corpus: Mapping[str, str],
    document_ids: list[str],
    depth: int,
    corpus_vectors: np.ndarray | None,
    progress_bar: bool,
) -> list[list[tuple[str, float]]]:
    if corpus_vectors is None:
        corpus_vectors = encoder.encode_documents([corpus[doc] for doc in document_ids], progress_bar=progress_bar)
    elif corpus_vectors.shape[0] != len(document_ids):
        raise ConfigurationError(
            f"corpus_vectors has {corpus_vectors.shape[0]} rows for {len(document_ids)} documents; pass one vector "
            f"per corpus document, in corpus order, or None to encode them."
        )
    query_vectors = encoder.encode_queries([queries[query] for query in query_ids], progress_bar=False)
    documents = np.asarray(corpus_vectors, dtype=np.float32)
    if encoder.similarity == "cosine":
        documents = _unit_rows(documents)
        query_vectors = _unit_rows(query_vectors)
    depth = min(depth, len(document_ids))
    rankings = []
    for start in range(0, len(query_ids), _QUERY_BLOCK):
        # A block of queries at a time keeps the similarity matrix small on a large corpus.
        for row in query_vectors[start : start + _QUERY_BLOCK] @ documents.T:
            top = np.argpartition(-row, depth - 1)[:depth]
            top = top[np.lexsort((top, -row[top]))]
            rankings.append([(document_ids[i], float(row[i])) for i in top])
    return rankings


def _keyword_rankings(
    queries: Mapping[str, str],
    query_ids: list[str],
    corpus: Mapping[str, str],
    document_ids: list[str],
    depth: int,
    config: KeywordConfig | None,
) -> list[list[tuple[str, float]]]:
    index = KeywordIndex(config)
    index.set_rows(list(range(len(document_ids))), [corpus[doc] for doc in document_ids])
    rankings = []
    for query in query_ids:
        slots, scores = index.search(queries[query], depth)
        rankings.append([(document_ids[slot], float(score)) for slot, score in zip(slots.tolist(), scores.tolist())])
    return rankings


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def _ndcg(rankings: list[list[str]], query_ids: list[str], judged: Mapping[str, Mapping[str, int]]) -> np.ndarray:
    """Per-query nDCG@10 with linear gains (trec_eval's ``ndcg_cut.10``)."""
    discounts = 1.0 / np.log2(np.arange(2, _DEPTH + 2))
    values = []
    for ranking, query in zip(rankings, query_ids):
        grades = judged[query]
        gains = np.array([grades.get(doc, 0) for doc in ranking[:_DEPTH]], dtype=float)
        ideal = np.sort(np.array(list(grades.values()), dtype=float))[::-1][:_DEPTH]
        best = float((ideal * discounts[: len(ideal)]).sum())
        values.append(float((gains * discounts[: len(gains)]).sum()) / best if best else 0.0)
    return np.array(values)


# ------------------------------------------------------------------------------------------ the record
def model_folder(model: str | os.PathLike[str] | None) -> Path | None:
    """The local folder of ``model`` (a model name or path), or ``None`` for a hub name or packaged alias."""
    if model is None:
        return None
    from dual_encoder.models import MODEL_ALIASES

    if str(model) in MODEL_ALIASES:
        return None
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def write_fusion_choice(folder: str | os.PathLike[str], choice: FusionChoice) -> Path:
    """Record ``choice`` as ``hybrid_fusion.json`` in the model folder ``folder``: written beside it, flushed,
    then renamed over it, so a crash leaves the old record or the new one, never half of one.

    :returns: The file's path.
    :raises ConfigurationError: ``folder`` is not a folder.
    """
    directory = Path(folder)
    if not directory.is_dir():
        raise ConfigurationError(f"'{directory}' is not a model folder; the fusion record goes inside one.")
    path = directory / FUSION_FILE
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(choice.to_dict(), indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    with _cache_lock:
        _cache.pop(str(path.resolve()), None)
    return path


_cache: dict[str, tuple[tuple[int, int], FusionChoice | None]] = {}
_cache_lock = threading.Lock()


def read_fusion_choice(model: str | os.PathLike[str] | None) -> FusionChoice | None:
    """The fusion recorded in the folder of ``model`` (a model path or name), or ``None`` when ``model`` is not a
    local folder or its folder holds no record.

    :raises FusionRecordError: the record exists but cannot be read or is invalid; the message names the file
        and how to fix it.
    """
    directory = model_folder(model)
    if directory is None:
        return None
    path = directory / FUSION_FILE
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    key, stamp = str(path.resolve()), (status.st_mtime_ns, status.st_size)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ConfigurationError(f"it holds a JSON {type(data).__name__}, not an object.")
        choice = FusionChoice.from_dict(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ConfigurationError, TypeError, ValueError) as error:
        raise FusionRecordError(
            f"The fusion record '{path}' is damaged ({error}). Recreate it with: dual-encoder tune-fusion "
            f"--model {directory} --data <BEIR folder or .jsonl>, or delete it to use the default fusion, or pass "
            f"the weight explicitly."
        ) from error
    with _cache_lock:
        _cache[key] = (stamp, choice)
    return choice


@dataclass(frozen=True)
class FusionSetting:
    """The fusion a hybrid search runs with, and where it came from: ``"given"`` (passed by the caller),
    ``"model"`` (recorded in the model folder, ``record`` naming the file) or ``"default"``."""

    fusion: FusionMethod
    weight: float
    source: str
    record: str | None = None

    def describe(self) -> str:
        where = {"given": "as given", "model": f"recorded in {self.record}", "default": "the library default"}
        return f"{self.fusion} fusion, weight {self.weight:g} ({where[self.source]})"


_announced: set[tuple[str, str, float, str]] = set()


def resolve_fusion(model: str | os.PathLike[str] | None, fusion: str | None, weight: float | None) -> FusionSetting:
    """The fusion a hybrid search with ``model`` should use.

    - ``weight`` given: it wins, with ``fusion`` or, when that is ``None``, the default method;
    - ``weight`` ``None``: the model folder's record if there is one (and its method matches ``fusion`` when
      ``fusion`` is given), else :data:`~dual_encoder.hybrid.DEFAULT_WEIGHT` with ``fusion`` or
      :data:`~dual_encoder.hybrid.DEFAULT_FUSION`.

    The setting used is logged once per model and setting (INFO).

    :raises FusionRecordError: the model folder's record is damaged.
    :raises ConfigurationError: an unknown fusion or a weight outside [0, 1].
    """
    from dual_encoder.hybrid import DEFAULT_FUSION, DEFAULT_WEIGHT

    if weight is not None:
        setting = FusionSetting(fusion or DEFAULT_FUSION, weight, "given")  # type: ignore[arg-type]
    else:
        choice = read_fusion_choice(model)
        if choice is not None and (fusion is None or fusion == choice.fusion):
            record = str(Path(str(model)).expanduser() / FUSION_FILE)
            setting = FusionSetting(choice.fusion, choice.weight, "model", record)
        else:
            setting = FusionSetting(fusion or DEFAULT_FUSION, DEFAULT_WEIGHT, "default")  # type: ignore[arg-type]
    validate_fusion(setting.fusion, setting.weight)
    key = (str(model), setting.fusion, setting.weight, setting.source)
    if key not in _announced:
        _announced.add(key)
        logger.info("Hybrid search with model %s: %s.", model, setting.describe())
    return setting
