"""What a training run does: one :class:`TrainingConfig`, checked before any model is loaded.

Example::

    config = TrainingConfig(
        data="../shared/data/scifact",        # BEIR folder (qrels/train.tsv) or a .jsonl of pairs/triplets
        output="models/scifact-siamese",
        architecture="siamese",
        hard_negatives=1,
    )
    result = train(config)
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from dual_encoder.errors import ConfigurationError

#: Architectures, from most to least shared (Dong et al. 2022; KALE 2023 for ``light-query``).
ARCHITECTURES = (
    "siamese",
    "asymmetric",
    "asymmetric-shared-projection",
    "asymmetric-frozen-embeddings",
    "light-query",
    "static-query",
)
#: ``mnrl``: in-batch negatives (MultipleNegativesRankingLoss); ``cached-mnrl``: the same loss with gradient
#: caching, so a large batch fits in little memory; ``gist`` / ``cached-gist``: in-batch negatives that the base
#: model (the guide) scores above the positive are left out, since they are likely unlabelled positives
#: (GISTEmbedLoss); ``triplet``: margin loss on (query, positive, negative).
LOSSES = ("mnrl", "cached-mnrl", "gist", "cached-gist", "triplet")
#: How a ``light-query`` or ``static-query`` tower learns: towards the full model's query embeddings, against the
#: frozen document tower, or both.
LIGHT_QUERY_OBJECTIVES = ("distill", "contrastive", "both")
#: ``auto``: bf16 mixed precision where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX) and bf16 measures
#: faster than fp32 there (``trainer.bf16_timing``), else fp32.
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainingConfig:
    """Everything a training run needs. Defaults were chosen on a dev slice of SciFact train (see
    ``benchmarks/training.py``), never on a test split.

    :param data: A BEIR-layout folder (positives from ``qrels/<split>.tsv``) or a ``.jsonl`` file of
        ``{"query", "positive"[, "negative"]}`` objects.
    :param output: Folder the trained model, its checkpoints and the training report are written to.
    :param base_model: The model training starts from (a folder or a known name).
    :param query_model: For ``asymmetric``, ``asymmetric-shared-projection`` and ``asymmetric-frozen-embeddings``:
        start the query tower from this model instead of ``base_model`` (for example a smaller one).
    :param architecture: One of :data:`ARCHITECTURES`.
    :param query_layers: For ``light-query``: how many of the document tower's layers the query tower keeps.
    :param light_query_objective: For ``light-query``: one of :data:`LIGHT_QUERY_OBJECTIVES`.
    :param loss: One of :data:`LOSSES`.
    :param hard_negatives: Hard negatives mined per training pair with the base encoder (0 turns mining off).
    :param negative_rank_range: Ranks (0-based, positives excluded) hard negatives are drawn from; skipping
        the very top avoids unlabelled positives.
    :param negative_relative_margin: A mined negative must score at most ``(1 - margin)`` times the base
        model's score of the pair's positive (sentence-transformers' ``relative_margin``): documents scored
        about as high as a positive are likely unlabelled positives, i.e. false negatives. ``0`` (the default,
        chosen on the dev slice: see benchmarks/README.md, Training) turns it off; the rank window and the
        query-aware batches still keep judged positives out of the negatives.
    :param negative_max_score: A mined negative must score at most this (``None``: no cap).
    :param max_steps: The step budget: training stops after ``epochs`` or this many optimizer steps, whichever
        comes first (``None``: no budget). Steps cost the same whatever the data set, so the budget bounds the
        time of a large run without changing a small one.
    :param min_improvement_standard_errors: The guard. The saved model is the best of the base model and every
        checkpoint on the dev slice; a checkpoint replaces the base only if its mean dev nDCG@10 gain over the
        base exceeds this many paired standard errors (over dev queries) of that gain. Otherwise the base
        model is saved and the report says ``no_improvement``.
    :param dev_fraction: Share of the training queries held out to evaluate on, when there is no dev split.
    :param dev_split: Name of a BEIR split used for evaluation instead of a held-out slice (e.g. ``dev``).
    :param eval_corpus_size: Documents the dev evaluation searches: the dev positives plus distractors up to
        this many (``None``: the whole corpus).
    :param train_document_tokens: Train on only the first this-many tokens of each document (``None``: the
        tower's own limit; 192 by default). On a CPU, document tokens are most of a step's cost, so a shorter
        training view buys more steps in the same time; the saved model keeps its full limit, and the dev evaluation and
        every later index use it.
    """

    data: str | Path
    output: str | Path
    base_model: str = "all-MiniLM-L6-v2"
    architecture: str = "siamese"
    query_model: str | None = None
    query_layers: int = 3
    light_query_objective: str = "both"
    loss: str = "mnrl"
    epochs: float = 4.0
    learning_rate: float = 1e-4
    batch_size: int = 32
    mini_batch_size: int = 16
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    triplet_margin: float = 0.25
    scale: float = 20.0
    hard_negatives: int = 1
    negative_rank_range: tuple[int, int] = (10, 50)
    negative_relative_margin: float = 0.0
    negative_max_score: float | None = None
    split: str = "train"
    dev_split: str | None = None
    dev_fraction: float = 0.1
    eval_corpus_size: int | None = 1000
    evaluations_per_epoch: int = 1
    max_steps: int | None = 120
    min_improvement_standard_errors: float = 2.0
    max_seq_length: int | None = None
    train_document_tokens: int | None = 192
    query_prompt: str | None = None
    document_prompt: str | None = None
    precision: str = "auto"
    seed: int = 42
    progress_bar: bool = True
    trust_remote_code: bool = False
    #: ``static-query`` only (see :mod:`dual_encoder.training.static_query`): how the token table starts, and the
    #: loop that trains it. Its steps are table lookups, so it runs by epochs; ``max_steps``, ``epochs``,
    #: ``learning_rate`` and ``batch_size`` are the transformer architectures' settings.
    static_query_init: str = "token-outputs"
    static_query_epochs: int = 6
    static_query_learning_rate: float = 0.01
    static_query_batch_size: int = 256

    def __post_init__(self) -> None:
        self.negative_rank_range = tuple(self.negative_rank_range)  # type: ignore[assignment]
        self.validate()

    @classmethod
    def defaults(cls) -> Any:
        """The default of every option that has one, as attributes (``TrainingConfig.defaults().epochs``)."""
        from types import SimpleNamespace

        return SimpleNamespace(**{f.name: f.default for f in fields(cls) if f.default is not MISSING})

    def validate(self) -> None:
        """Refuse impossible settings before anything expensive happens."""
        _one_of("architecture", self.architecture, ARCHITECTURES)
        _one_of("loss", self.loss, LOSSES)
        _one_of("light_query_objective", self.light_query_objective, LIGHT_QUERY_OBJECTIVES)
        _one_of("precision", self.precision, PRECISIONS)
        _positive_int("batch_size", self.batch_size)
        _positive_int("mini_batch_size", self.mini_batch_size)
        _positive_int("query_layers", self.query_layers)
        _positive_int("evaluations_per_epoch", self.evaluations_per_epoch)
        _one_of("static_query_init", self.static_query_init, ("token-outputs", "token-embeddings"))
        _positive_int("static_query_epochs", self.static_query_epochs)
        _positive_int("static_query_batch_size", self.static_query_batch_size)
        if not 0 < self.static_query_learning_rate < 10:
            raise ConfigurationError(
                f"static_query_learning_rate must be above 0 (and below 10), got {self.static_query_learning_rate!r}."
            )
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        if self.eval_corpus_size is not None:
            _positive_int("eval_corpus_size", self.eval_corpus_size)
        if self.train_document_tokens is not None:
            _positive_int("train_document_tokens", self.train_document_tokens)
        if not self.epochs > 0:
            raise ConfigurationError(f"epochs must be above 0, got {self.epochs!r}.")
        if not 0 <= self.learning_rate < 1:
            raise ConfigurationError(f"learning_rate must be in [0, 1), got {self.learning_rate!r}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigurationError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if not 0 <= self.negative_relative_margin < 1:
            raise ConfigurationError(
                f"negative_relative_margin must be in [0, 1), got {self.negative_relative_margin!r}."
            )
        if not self.min_improvement_standard_errors >= 0:
            raise ConfigurationError(
                f"min_improvement_standard_errors must be 0 or more, got {self.min_improvement_standard_errors!r}."
            )
        if not 0 <= self.dev_fraction < 1:
            raise ConfigurationError(f"dev_fraction must be in [0, 1), got {self.dev_fraction!r}.")
        if isinstance(self.hard_negatives, bool) or not isinstance(self.hard_negatives, int) or self.hard_negatives < 0:
            raise ConfigurationError(f"hard_negatives must be 0 or a positive integer, got {self.hard_negatives!r}.")
        low, high = self.negative_rank_range
        if not (isinstance(low, int) and isinstance(high, int) and 0 <= low < high):
            raise ConfigurationError(
                f"negative_rank_range must be two ranks (first, last) with 0 <= first < last, got "
                f"{self.negative_rank_range!r}."
            )
        if self.hard_negatives and high - low < self.hard_negatives:
            raise ConfigurationError(
                f"negative_rank_range {self.negative_rank_range} holds {high - low} ranks, fewer than the "
                f"{self.hard_negatives} hard negatives asked for. Widen the range or ask for fewer."
            )
        if self.query_model is not None and self.architecture in ("siamese", "light-query", "static-query"):
            raise ConfigurationError(
                f"query_model gives the query tower its own starting model; {self.architecture} derives the query "
                f"tower from base_model. Use an asymmetric architecture, or leave query_model unset."
            )
        if self.architecture == "light-query" and self.light_query_objective != "distill" and self.loss == "triplet":
            raise ConfigurationError(
                "light-query trains against the frozen document tower with in-batch negatives; use loss 'mnrl' or "
                "'cached-mnrl' (or light_query_objective='distill')."
            )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["data"] = str(self.data)
        values["output"] = str(self.output)
        values["negative_rank_range"] = list(self.negative_rank_range)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigurationError(f"Unknown training option(s) {unknown}; known options are {sorted(known)}.")
        return cls(**values)


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigurationError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}.")
