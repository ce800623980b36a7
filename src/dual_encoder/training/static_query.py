"""The ``static-query`` architecture: a static token-embedding query tower over the frozen base model.

The query tower is sentence-transformers' ``StaticEmbedding``: one vector per token of the base model's
vocabulary, averaged over a query's tokens (no special tokens), then the base model's ``Normalize``. The document
tower is the base model itself, frozen and unchanged, so documents keep the base model's fingerprint and every
existing index stays valid. The saved folder is a ``Router`` model that every component loads as-is, plus the
``static_query/`` export that answers queries without torch (:mod:`dual_encoder.static_query`).

How it is trained:

1. **Initialisation** (``static_query_init``): ``"token-outputs"`` (default) runs every vocabulary token through
   the document tower on its own (``[CLS] token [SEP]``, the tower's pooling) and starts from those vectors, the
   distillation model2vec performs (without its PCA and Zipf weighting, which training makes unnecessary);
   ``"token-embeddings"`` starts from the tower's input token embeddings instead.
2. **What is fixed once**: the frozen document tower embeds a pool of documents once (every document of a
   small corpus; for a large one, every labelled document plus a seeded sample), and the full model embeds the
   query-like texts (the training queries, and openings and sentences of the documents, as ``light-query``
   distils on). Since neither tower changes, no transformer runs during training: a step is a table lookup and
   a few matrix products, so many epochs fit in minutes on a CPU.
3. **Objectives** (``light_query_objective``), per step:

   - *distillation* (no labels): the static vector of a text is pulled towards the full model's vector of the
     same text (squared distance), and its score distribution over the document pool towards the full model's
     (KL divergence of the softmax at temperature ``_TEMPERATURE``): the second teaches the ranking the index
     will give, which is what retrieval needs;
   - *contrastive* (labelled pairs): each training query's positive is pushed above every other pooled document
     (softmax over the pool at scale ``TrainingConfig.scale``; the query's other positives are left out).

   With ``both`` (default) each step adds the two. A data set without labels (a BEIR folder without
   ``qrels/<split>.tsv``) is trained by distillation alone, on the corpus text.
4. **Choosing what is saved**: a dev slice of the labelled queries is ranked over the whole pool after every
   epoch; the guard (:mod:`dual_encoder.training.guard`) compares each epoch with the *initialised* static tower
   and keeps the best epoch only if it beats that start measurably. Without labels, the last epoch is saved.

The token unknown to the vocabulary keeps a zero vector: a query that is nothing but unknown tokens would embed
to zero, and the encoders refuse it with :class:`dual_encoder.static_query.UnknownTokensError` instead.

Example::

    result = train(TrainingConfig(data="../shared/data/scifact", output="models/static", architecture="static-query"))
    DualEncoder("models/static").encode_query("What causes tides?")     # torch-free
"""

from __future__ import annotations

import copy
import logging
import math
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dual_encoder.config import Backend, EncoderConfig
from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import ConfigurationError
from dual_encoder.models import load_shared_model
from dual_encoder.sources import json_objects
from dual_encoder.training.config import TrainingConfig
from dual_encoder.training.data import TrainingData, load_training_data, query_sized_pieces

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from dual_encoder.training.guard import DevScores
    from dual_encoder.training.trainer import TrainingResult

logger = logging.getLogger(__name__)

#: Ways to initialise the static table (see the module docstring).
STATIC_QUERY_INITS = ("token-outputs", "token-embeddings")
#: Temperature of the score distributions the listwise distillation compares.
_TEMPERATURE = 0.05
#: At most this many documents are embedded once as the pool the losses and the dev ranking use.
_POOL_MAX_DOCUMENTS = 20_000
#: At most this many query-like texts are distilled on per epoch (as for light-query).
_DISTILLATION_MAX_TEXTS = 20_000
_DISTILLATION_OPENING_WORDS = 24
_TOKENS_PER_INIT_BATCH = 2048
_LATENCY_QUERIES = 100


def train_static_query(config: TrainingConfig, *, announce: Callable[[str], None] | None = print) -> TrainingResult:
    """Train a ``static-query`` model as ``config`` says and save it, with its report, to ``config.output``."""
    import torch

    from dual_encoder.static_query import write_static_query_export
    from dual_encoder.training.guard import IMPROVED, NO_IMPROVEMENT, judge
    from dual_encoder.training.report import write_training_outputs
    from dual_encoder.training.trainer import (
        TrainingResult,
        _check_output_folder,
        _clear_model_files,
        _train_and_dev,
        resolve_precision,
    )

    say = announce or (lambda message: None)
    output = Path(config.output)
    _check_output_folder(output)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    precision = resolve_precision(config.precision)

    base = _base_model(config)
    data, labelled, notes = _training_texts(config)
    train_data, dev_data = _train_and_dev(config, data) if labelled else (data, None)
    objective = config.light_query_objective if labelled else "distill"
    if not labelled:
        notes.append(
            f"No labelled pairs in '{config.data}' (no qrels/{config.split}.tsv): the static query tower was trained "
            f"by distillation alone, on the corpus text, and the last epoch was saved."
        )

    mark = time.perf_counter()
    tokenizer = _query_tokenizer(base)
    table = initial_table(base, config.static_query_init, tokenizer)
    timings["initialisation_seconds"] = time.perf_counter() - mark

    # Both towers are frozen, so what they compute is computed once. bf16 runs may use the faster OpenVINO bf16
    # backend for it: the same space, as for hard-negative mining.
    mark = time.perf_counter()
    teacher = DualEncoder(_encoder_config(config, backend="openvino-bf16" if precision == "bf16" else "torch"))
    # The prompt the saved tower puts before every query: the configured one, else the base model's own.
    query_prompt = teacher.query_prompt
    pool_ids = _document_pool(train_data, dev_data, seed=config.seed)
    say(
        f"static-query: embedding {len(pool_ids):,} documents once with the frozen document tower, and the "
        f"query-like texts with the full query tower."
    )
    pool = teacher.encode_documents([data.documents[i] for i in pool_ids], progress_bar=config.progress_bar)
    distill_texts = _distillation_texts(train_data, labelled=labelled, seed=config.seed)
    distill_targets = teacher.encode_queries(distill_texts, progress_bar=config.progress_bar)
    timings["teacher_seconds"] = time.perf_counter() - mark

    position = {doc_id: row for row, doc_id in enumerate(pool_ids)}
    pairs = _contrastive_pairs(train_data, position) if labelled and objective != "distill" else []
    dev = _DevSlice(dev_data, pool, pool_ids, tokenizer, query_prompt) if dev_data is not None else None

    mark = time.perf_counter()
    trainer = _StaticTrainer(
        table=table,
        unknown_ids=_unknown_ids(tokenizer),
        pool=pool,
        scale=config.scale,
        learning_rate=config.static_query_learning_rate,
        seed=config.seed,
    )
    distill_tokens = _tokenize(tokenizer, distill_texts, query_prompt) if objective != "contrastive" else []
    pair_tokens = _tokenize(tokenizer, [text for text, _ in pairs], query_prompt)
    base_scores = dev.score(trainer.table(), step=0, epoch=0.0) if dev else None
    full_tower_scores = dev.score_vectors(teacher.encode_queries(dev.texts), step=0, epoch=0.0) if dev else None
    history: dict[str, list] = {"loss": [], "dev": []}
    checkpoints: list[Any] = []
    tables: dict[int, np.ndarray] = {}
    interrupted = False
    batch_size = config.static_query_batch_size
    steps_per_epoch = max(1, math.ceil(max(len(distill_tokens), len(pair_tokens)) / batch_size))
    pairs_per_step = max(1, math.ceil(len(pair_tokens) / steps_per_epoch)) if pair_tokens else 0
    say(
        f"static-query: {config.static_query_epochs} epochs of {steps_per_epoch} steps ({len(distill_tokens):,} "
        f"distillation texts, {len(pair_tokens):,} labelled pairs)."
    )
    try:
        for epoch in range(1, config.static_query_epochs + 1):
            loss = trainer.epoch(
                distill_tokens,
                distill_targets,
                pair_tokens,
                [p for _, p in pairs],
                batch_size=batch_size,
                pairs_per_step=pairs_per_step,
                steps=steps_per_epoch,
            )
            step = epoch * steps_per_epoch
            history["loss"].append({"step": step, "epoch": float(epoch), "loss": loss})
            if dev is not None:
                scores = dev.score(trainer.table(), step=step, epoch=float(epoch))
                checkpoints.append(scores)
                tables[step] = trainer.table().copy()
                history["dev"].append({"step": step, "epoch": float(epoch), **scores.means()})
            else:
                tables = {step: trainer.table().copy()}
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("Training interrupted; the epochs finished so far are compared with the initial tower.")
    timings["training_seconds"] = time.perf_counter() - mark

    if base_scores is not None:
        verdict = judge(base_scores, checkpoints, threshold=config.min_improvement_standard_errors)
        chosen_step = verdict.chosen_step if verdict.status == IMPROVED else None
        chosen = tables[chosen_step] if chosen_step is not None else table
    else:
        verdict = None
        chosen = tables[max(tables)] if tables else table

    model = build_static_query_model(base, tokenizer, chosen, config)
    _clear_model_files(output)
    save_static_query_model(model, output)
    write_static_query_export(output, model)
    saved = DualEncoder(_encoder_config(config, model=str(output)))
    base_fingerprint = teacher.fingerprint
    if saved.fingerprint.document_space != base_fingerprint.document_space:
        raise RuntimeError(  # pragma: no cover - the document tower is the base model's; this guards that promise
            "The static-query model's document tower differs from the base model's; its documents would need "
            "re-indexing."
        )
    latency = query_latency(_encoder_config(config), saved.config, dev.texts if dev else distill_texts)
    timings["total_seconds"] = time.perf_counter() - started

    kept_initial = verdict is not None and verdict.status == NO_IMPROVEMENT
    written = write_training_outputs(
        output,
        config=config,
        verdict=verdict,
        saved=saved,
        base_fingerprint=base_fingerprint,
        precision=precision,
        frozen=["document tower"],
        interrupted=interrupted,
        saved_model="initialised static tower" if kept_initial else "trained",
        # The saved model is a static-query model even when the guard kept the initialised table.
        saved_architecture=config.architecture,
        data={
            "training_pairs": len(train_data.pairs) if labelled else 0,
            "training_queries": len({p.query_id for p in train_data.pairs}) if labelled else 0,
            "documents": len(data.documents),
            "pooled_documents": len(pool_ids),
            "distillation_texts": len(distill_texts),
            "dev_queries": len(dev.texts) if dev else 0,
            "dev_corpus_documents": len(pool_ids) if dev else 0,
            "hard_negatives_per_pair": 0,
            "notes": notes,
        },
        dev_corpus=dev.describe() if dev else None,
        steps=steps_per_epoch * len(history["loss"]),
        epochs_completed=len(history["loss"]),
        history=history,
        timings=timings,
        details={
            "objective": objective,
            "dev_full_query_tower": full_tower_scores.means() if full_tower_scores else None,
            "query_encoding": latency,
        },
        message=(
            "No epoch beat the initialised static query tower on the dev slice by more than "
            f"{config.min_improvement_standard_errors:g} standard errors; the initialised tower was saved."
            if kept_initial
            else None
        ),
    )
    say(written.report["message"])
    say(
        f"Query encoding p50: static tower {latency['static_p50_ms']:.3f} ms, "
        f"full tower {latency['full_p50_ms']:.3f} ms ({latency['speedup']:.0f}x), "
        f"side by side over {latency['queries']} queries."
    )
    return TrainingResult(
        model_path=output, report=written.report, report_path=written.report_path, plot_path=written.plot_path
    )


# ------------------------------------------------------------------------------------------------ the model
def build_static_query_model(
    base: SentenceTransformer, tokenizer: Any, table: np.ndarray, config: TrainingConfig | None = None
) -> SentenceTransformer:
    """A Router model: ``query`` is a ``StaticEmbedding`` over ``table``, ``document`` the base model's modules
    (deep copies, unchanged), then the base model's trailing ``Normalize`` (shared)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Router
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    document_modules: list[Any] = list(copy.deepcopy(base))
    shared: list[Any] = []
    if document_modules and isinstance(document_modules[-1], Normalize):
        document_modules, shared = document_modules[:-1], [Normalize()]
    dimension = base.get_embedding_dimension()
    if table.shape[1] != dimension:
        raise ConfigurationError(
            f"The static table has {table.shape[1]} columns but the document tower outputs {dimension}."
        )
    static = StaticEmbedding(_copy_tokenizer(tokenizer), embedding_weights=torch.from_numpy(table.copy()))
    router = Router.for_query_document(query_modules=[static], document_modules=document_modules)
    prompts: dict[str, str] = {name: text or "" for name, text in (base.prompts or {}).items()}
    if config is not None and config.query_prompt is not None:
        prompts["query"] = config.query_prompt
    if config is not None and config.document_prompt is not None:
        prompts["document"] = config.document_prompt
    model = SentenceTransformer(modules=[router, *shared], prompts=prompts, device="cpu")
    model.similarity_fn_name = base.similarity_fn_name
    return model


def save_static_query_model(model: SentenceTransformer, output: Path) -> None:
    """``model.save(output)``, with the token limit stated right.

    sentence-transformers reads a Router's limit as the largest of its routes', and a ``StaticEmbedding`` reports an
    infinite one (a mean has no position limit): saving would warn that the routes' limits differ and write
    "inf tokens" into the model card, although the static tower's tokenizer truncates queries at the document
    tower's limit. The warning is left out and the card states both limits.
    """
    from dual_encoder.encoder import DOCUMENT_ROUTE, QUERY_ROUTE, tower_modules
    from dual_encoder.static_query import token_limit

    router_logger = logging.getLogger("sentence_transformers.base.modules.router")
    mixed_limits = _DropMessages("Different max_seq_lengths detected")
    router_logger.addFilter(mixed_limits)
    try:
        model.save(str(output))
    finally:
        router_logger.removeFilter(mixed_limits)
    card = output / "README.md"
    if card.is_file():
        document = token_limit(tower_modules(model, DOCUMENT_ROUTE)[0])
        query = token_limit(tower_modules(model, QUERY_ROUTE)[0])
        stated = f"{document} tokens for documents, {query} for queries (static tower: its tokenizer truncates)"
        text = card.read_text(encoding="utf-8")
        card.write_text(
            text.replace("**Maximum Sequence Length:** inf tokens", f"**Maximum Sequence Length:** {stated}"),
            encoding="utf-8",
        )


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def initial_table(base: SentenceTransformer, how: str, tokenizer: Any) -> np.ndarray:
    """The starting ``(vocabulary, dimension)`` float32 table (see ``STATIC_QUERY_INITS``); the unknown token's
    row is zero."""
    import torch

    transformer: Any = base[0]
    backbone: Any = getattr(transformer, "auto_model", None) or getattr(transformer, "model", None)
    if how == "token-embeddings":
        embeddings = backbone.get_input_embeddings().weight.detach().float().cpu().numpy()
        table = np.array(embeddings, dtype=np.float32)
    elif how == "token-outputs":
        vocabulary = tokenizer.get_vocab_size()
        hf_tokenizer = transformer.tokenizer
        start, end = hf_tokenizer.cls_token_id, hf_tokenizer.sep_token_id
        if start is None or end is None:
            raise ConfigurationError(
                "static_query_init='token-outputs' frames each token with the tokenizer's [CLS] and [SEP] tokens; "
                "this tokenizer has none. Use static_query_init='token-embeddings'."
            )
        towers = list(base)[:-1] if type(base[-1]).__name__ == "Normalize" else list(base)
        dimension = base.get_embedding_dimension()
        assert dimension is not None  # a sentence-transformers model with a pooling layer reports it
        table = np.zeros((vocabulary, dimension), dtype=np.float32)
        with torch.inference_mode():
            for first in range(0, vocabulary, _TOKENS_PER_INIT_BATCH):
                ids = torch.arange(first, min(vocabulary, first + _TOKENS_PER_INIT_BATCH))
                input_ids = torch.stack([torch.full_like(ids, start), ids, torch.full_like(ids, end)], dim=1)
                features: dict[str, Any] = {
                    "input_ids": input_ids.to(base.device),
                    "attention_mask": torch.ones_like(input_ids).to(base.device),
                    "token_type_ids": torch.zeros_like(input_ids).to(base.device),
                }
                for module in towers:
                    features = module(features)
                table[first : first + len(ids)] = features["sentence_embedding"].float().cpu().numpy()
    else:
        raise ConfigurationError(f"static_query_init must be one of {STATIC_QUERY_INITS}, got {how!r}.")
    if table.shape[0] != tokenizer.get_vocab_size():
        raise ConfigurationError(
            f"The tokenizer has {tokenizer.get_vocab_size()} tokens but the token table {table.shape[0]} rows."
        )
    table[list(_unknown_ids(tokenizer))] = 0.0
    return table


class _StaticTrainer:
    """The training loop: a sparse ``EmbeddingBag`` (mean), trained with SparseAdam (only the rows a batch
    touches are updated, so a step costs what its texts cost, not the vocabulary)."""

    def __init__(
        self,
        *,
        table: np.ndarray,
        unknown_ids: tuple[int, ...],
        pool: np.ndarray,
        scale: float,
        learning_rate: float,
        seed: int,
    ) -> None:
        import torch

        self._torch = torch
        self.bag = torch.nn.EmbeddingBag(table.shape[0], table.shape[1], mode="mean", sparse=True)
        with torch.no_grad():
            self.bag.weight.copy_(torch.from_numpy(table))
        self.optimizer = torch.optim.SparseAdam(self.bag.parameters(), lr=learning_rate)
        self.pool = torch.from_numpy(np.ascontiguousarray(pool, dtype=np.float32))
        self.unknown = list(unknown_ids)
        self.scale = scale
        self.rng = np.random.default_rng(seed)

    def table(self) -> np.ndarray:
        return self.bag.weight.detach().numpy()

    def embed(self, token_lists: list[np.ndarray]) -> Any:
        torch = self._torch
        flat = torch.from_numpy(np.concatenate(token_lists)) if token_lists else torch.zeros(0, dtype=torch.long)
        offsets = torch.from_numpy(np.cumsum([0] + [len(tokens) for tokens in token_lists[:-1]]))
        return torch.nn.functional.normalize(self.bag(flat, offsets), dim=1)

    def epoch(
        self,
        distill_tokens: list[np.ndarray],
        distill_targets: np.ndarray,
        pair_tokens: list[np.ndarray],
        positives: list[tuple[int, frozenset[int]]],
        *,
        batch_size: int,
        pairs_per_step: int,
        steps: int,
    ) -> float:
        """One pass over the distillation texts (and the labelled pairs alongside); returns the mean loss."""
        torch = self._torch
        functional = torch.nn.functional
        targets = torch.from_numpy(np.ascontiguousarray(distill_targets, dtype=np.float32))
        distill_order = self.rng.permutation(len(distill_tokens))
        pair_order = self.rng.permutation(len(pair_tokens))
        total = 0.0
        for step in range(steps):
            loss = torch.zeros(())
            chosen = distill_order[step * batch_size : (step + 1) * batch_size]
            if len(chosen):
                student = self.embed([distill_tokens[i] for i in chosen])
                teacher = targets[chosen]
                loss = loss + ((student - teacher) ** 2).sum(dim=1).mean()
                teacher_log = functional.log_softmax(teacher @ self.pool.T / _TEMPERATURE, dim=1)
                student_log = functional.log_softmax(student @ self.pool.T / _TEMPERATURE, dim=1)
                loss = loss + (teacher_log.exp() * (teacher_log - student_log)).sum(dim=1).mean()
            if pairs_per_step:
                rows = pair_order[(step * pairs_per_step) % len(pair_order) :][:pairs_per_step]
                student = self.embed([pair_tokens[i] for i in rows])
                logits = student @ self.pool.T * self.scale
                mask = torch.zeros_like(logits, dtype=torch.bool)
                target = []
                for row, pair in enumerate(rows):
                    positive, others = positives[pair]
                    target.append(positive)
                    mask[row, [other for other in others if other != positive]] = True
                loss = loss + functional.cross_entropy(logits.masked_fill(mask, -1e4), torch.tensor(target))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                self.bag.weight[self.unknown] = 0.0
            total += float(loss.detach())
        return total / max(1, steps)


class _DevSlice:
    """The dev queries ranked over the whole document pool, scored per query for the guard."""

    def __init__(
        self, dev: TrainingData, pool: np.ndarray, pool_ids: list[str], tokenizer: Any, prompt: str | None
    ) -> None:
        query_ids = sorted(dev.relevant)
        self.texts = [dev.queries[q] for q in query_ids]
        self.relevant = [dev.relevant[q] for q in query_ids]
        self.tokens = _tokenize(tokenizer, self.texts, prompt)
        self.pool_ids = pool_ids
        self.pool = pool

    def describe(self) -> dict[str, Any]:
        return {
            "documents": len(self.pool_ids),
            "dev_queries": len(self.texts),
            "description": f"the {len(self.pool_ids):,} pooled documents (every labelled document included)",
        }

    def score(self, table: np.ndarray, *, step: int, epoch: float) -> DevScores:
        vectors = np.stack(
            [
                table[tokens].mean(axis=0) if len(tokens) else np.zeros(table.shape[1], np.float32)
                for tokens in self.tokens
            ]
        )
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return self.score_vectors(vectors, step=step, epoch=epoch)

    def score_vectors(self, vectors: np.ndarray, *, step: int, epoch: float) -> DevScores:
        from dual_encoder.training.guard import DevScores, ranking_metrics

        scores = vectors @ self.pool.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        ranked = [[self.pool_ids[i] for i in row] for row in top]
        return DevScores(step=step, epoch=epoch, per_query=ranking_metrics(ranked, self.relevant))


# ------------------------------------------------------------------------------------------------ the data
def _base_model(config: TrainingConfig) -> SentenceTransformer:
    from sentence_transformers.base.modules import Router

    base = load_shared_model(config.base_model, trust_remote_code=config.trust_remote_code)
    if len(base) and isinstance(base[0], Router):
        raise ConfigurationError(
            f"Base model '{config.base_model}' is already asymmetric (it starts with a Router). static-query "
            f"trains a query tower for a Siamese model's document tower; pass that model."
        )
    if type(base[0]).__name__ != "Transformer":
        raise ConfigurationError(
            f"static-query needs a base model that starts with a transformer; '{config.base_model}' starts with "
            f"{type(base[0]).__name__}."
        )
    if config.max_seq_length is not None:
        # The limit is the saved model's: its document tower's and its query tokenizer's (the shared base stays).
        base = copy.deepcopy(base)
        base.max_seq_length = config.max_seq_length
    return base


def _training_texts(config: TrainingConfig) -> tuple[TrainingData, bool, list[str]]:
    """The training data, whether it has labels, and notes. A BEIR folder without qrels for the split gives its
    corpus alone (no labels)."""
    path = Path(config.data)
    if path.is_dir() and not (path / "qrels" / f"{config.split}.tsv").is_file():
        documents = _beir_corpus_texts(path)
        return TrainingData(queries={}, documents=documents, pairs=[]), False, []
    data = load_training_data(config.data, config.split)
    return data, True, list(data.notes)


def _beir_corpus_texts(folder: Path) -> dict[str, str]:
    """``corpus.jsonl`` of a BEIR folder as ``id -> title + " " + text`` (empty documents left out)."""
    corpus = folder / "corpus.jsonl"
    if not corpus.is_file():
        raise ConfigurationError(f"'{folder}' has no corpus.jsonl; a BEIR folder needs one to train on.")
    documents = {}
    for _, row in json_objects(corpus):
        text = f"{row.get('title') or ''} {row.get('text') or ''}".strip()
        if "_id" in row and text:
            documents[str(row["_id"])] = text
    if not documents:
        raise ConfigurationError(f"'{corpus}' holds no document with text to train on.")
    return documents


def _document_pool(train: TrainingData, dev: TrainingData | None, *, seed: int) -> list[str]:
    """Every document of a small corpus; for a large one, every labelled document plus a seeded sample."""
    everything = sorted(train.documents)
    if len(everything) <= _POOL_MAX_DOCUMENTS:
        return everything
    labelled = {p.document_id for p in train.pairs} | ({p.document_id for p in dev.pairs} if dev else set())
    others = sorted(set(everything) - labelled)
    sample = random.Random(seed).sample(others, max(0, _POOL_MAX_DOCUMENTS - len(labelled)))
    return sorted(labelled | set(sample))


def _distillation_texts(data: TrainingData, *, labelled: bool, seed: int) -> list[str]:
    """The training queries, then query-sized pieces of the documents (openings and sentences), as many as
    :data:`_DISTILLATION_MAX_TEXTS` allows (a seeded sample beyond that)."""
    queries = sorted({data.queries[p.query_id] for p in data.pairs}) if labelled else []
    pieces = query_sized_pieces(data.documents.values(), _DISTILLATION_OPENING_WORDS)
    pieces -= set(queries)
    pieces.discard("")
    kept = sorted(pieces)
    budget = max(0, _DISTILLATION_MAX_TEXTS - len(queries))
    if len(kept) > budget:
        kept = sorted(random.Random(seed).sample(kept, budget))
    return queries + kept


def _contrastive_pairs(data: TrainingData, position: dict[str, int]) -> list[tuple[str, tuple[int, frozenset[int]]]]:
    relevant = data.relevant
    pairs = []
    for pair in data.pairs:
        if pair.document_id in position:
            others = frozenset(position[d] for d in relevant[pair.query_id] if d in position)
            pairs.append((data.queries[pair.query_id], (position[pair.document_id], others)))
    return pairs


def _query_tokenizer(base: SentenceTransformer) -> Any:
    """The base model's tokenizer as a ``tokenizers.Tokenizer`` for queries: no padding, truncated at the
    document tower's token limit (a limit the torch and the torch-free path then share)."""
    hf_tokenizer = getattr(base[0], "tokenizer", None)
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigurationError(
            f"static-query needs a fast (Rust) tokenizer; {type(hf_tokenizer).__name__} is not one."
        )
    tokenizer = _copy_tokenizer(backend)
    tokenizer.no_padding()
    limit = base.max_seq_length
    if limit:
        tokenizer.enable_truncation(max_length=int(limit))
    else:
        tokenizer.no_truncation()
    return tokenizer


def _copy_tokenizer(tokenizer: Any) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer.to_str())


def _unknown_ids(tokenizer: Any) -> tuple[int, ...]:
    from dual_encoder.static_query import unknown_token_ids

    return unknown_token_ids(tokenizer)


def _tokenize(tokenizer: Any, texts: list[str], prompt: str | None) -> list[np.ndarray]:
    prefix = prompt or ""
    encodings = tokenizer.encode_batch([prefix + text for text in texts], add_special_tokens=False)
    return [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]


def _encoder_config(config: TrainingConfig, *, model: str | None = None, backend: Backend = "torch") -> EncoderConfig:
    return EncoderConfig(
        model=model or config.base_model,
        backend=backend,
        query_prompt=config.query_prompt,
        document_prompt=config.document_prompt,
        max_seq_length=config.max_seq_length,
        trust_remote_code=config.trust_remote_code,
    )


def query_latency(full: EncoderConfig, static: EncoderConfig, texts: list[str], rounds: int = 2) -> dict[str, Any]:
    """Median per-query encoding time of the full query tower and the static one, measured alternately."""
    import os

    queries = texts[:_LATENCY_QUERIES]
    encoders = {"full": DualEncoder(full), "static": DualEncoder(static)}
    for encoder in encoders.values():
        encoder.encode_query("warm up")
    samples: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(rounds):
        for name, encoder in encoders.items():
            for query in queries:
                started = time.perf_counter()
                encoder.encode_query(query)
                samples[name].append((time.perf_counter() - started) * 1000)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "full_p50_ms": round(medians["full"], 4),
        "static_p50_ms": round(medians["static"], 4),
        "speedup": round(medians["full"] / medians["static"], 1),
        "queries": len(queries),
        "rounds": rounds,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
