"""One training run, end to end, on sentence-transformers' trainer.

:func:`train` checks the configuration and builds the model first (a bad architecture fails before any data
is read), reads and checks the data, holds out a dev slice, prints the plan (pairs, queries, steps, the
budget), mines hard negatives with the base encoder (with a margin against the positive's score), and
trains with the chosen loss while scoring the dev slice per query. Then the guard
(:mod:`dual_encoder.training.guard`) decides what is saved in ``output``: the best checkpoint if it beats the
base model by more than the dev slice's noise, else the base model itself (status ``no_improvement``).
Alongside the model:

- ``README.md``: the model card sentence-transformers writes, plus the guard's before/after table;
- ``dual_encoder.json``: the encoder fingerprint (document space and query tower) and how it was trained;
- ``training_report.json`` and ``training_curves.png``: the plan, loss and dev metrics over the run, and the
  guard's verdict for every checkpoint;
- ``hybrid_fusion.json`` (with a dev slice): the hybrid fusion weight chosen for the saved model on the dev
  slice (:mod:`dual_encoder.training.fusion_dev`), which hybrid search uses when no weight is given.

Example::

    result = train(TrainingConfig(data="../shared/data/scifact", output="models/scifact"))
    result.status                               # "improved", "no_improvement" or "not_checked"
    result.report["guard"]["checkpoints"]       # dev metrics and gain over the base, per checkpoint
    DualEncoder(str(result.model_path))         # loads like any other model folder
"""

from __future__ import annotations

import functools
import logging
import math
import random
import re
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dual_encoder.config import Backend, EncoderConfig
from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import ConfigurationError
from dual_encoder.training.architectures import TrainingModel, build_training_model
from dual_encoder.training.config import TrainingConfig
from dual_encoder.training.data import (
    TrainingData,
    TrainingDataError,
    describe_evaluation_corpus,
    evaluation_corpus,
    load_training_data,
    query_sized_pieces,
    split_off_dev,
)
from dual_encoder.training.guard import (
    GUARD_METRIC,
    IMPROVED,
    NO_IMPROVEMENT,
    NOT_CHECKED,
    DevScores,
    Verdict,
    judge,
    paired_gain,
    ranking_metrics,
)
from dual_encoder.training.hard_negatives import Rankings, pick_negatives, rank_documents
from dual_encoder.training.losses import build_distillation_loss, build_loss, uses_in_batch_negatives
from dual_encoder.training.report import REPORT_FILE, write_training_outputs
from dual_encoder.training.sampling import QueryAwareSamplerFactory

logger = logging.getLogger(__name__)

CHECKPOINTS_FOLDER = "checkpoints"
#: ``dual-encoder train`` exits with this status when the guard kept the base model (``no_improvement``).
NO_IMPROVEMENT_EXIT_CODE = 3
_DEV_NAME = "dev"
_HARD_DISTRACTORS_PER_DEV_QUERY = 10
_DISTILLATION_OPENING_WORDS = 24
#: At most this many texts (queries first, then document pieces) per distillation epoch.
_DISTILLATION_MAX_TEXTS = 20_000
#: A run whose epochs would not reach this many dev evaluations is evaluated this often instead, so a run cut
#: short by the step budget still has checkpoints for the guard to choose from.
_MIN_EVALUATIONS = 4
#: Steps timed (after the first, which pays one-off set-up) before the time estimate is printed.
_TIMED_STEPS = 3


@dataclass(frozen=True)
class TrainingResult:
    model_path: Path
    report: dict[str, Any]
    report_path: Path
    plot_path: Path

    @property
    def status(self) -> str:
        """``improved``, ``no_improvement`` (the base model was saved) or ``not_checked`` (no dev slice)."""
        return str(self.report["status"])


def train(config: TrainingConfig | dict[str, Any], *, announce: Callable[[str], None] | None = print) -> TrainingResult:
    """Train a dual encoder as ``config`` says and save it, with its report, to ``config.output``.

    ``announce`` receives the plan before training and the time estimate after the first steps (``None``:
    silent). The saved model is never worse than the base on the dev slice: see the module docstring.
    """
    import transformers

    say = announce or (lambda message: None)
    config = config if isinstance(config, TrainingConfig) else TrainingConfig.from_dict(config)
    if config.architecture == "static-query":
        # Both towers are frozen there, so it trains a token table with its own loop (no transformer steps).
        from dual_encoder.training.static_query import train_static_query

        return train_static_query(config, announce=announce)
    output = Path(config.output)
    _check_output_folder(output)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    transformers.set_seed(config.seed)
    precision = resolve_precision(config.precision)

    built = build_training_model(config)
    data = load_training_data(config.data, config.split)
    train_data, dev_data = _train_and_dev(config, data)
    notes = list(data.notes)

    # Training arguments are validated now, so a setting the machine cannot run fails before the mining pass.
    plan = _plan(config, train_data, dev_data)
    timing = _auto_bf16_timing(config.precision)
    if timing is not None:
        plan["bf16_timing_ms"] = timing
    args = _training_arguments(config, output, plan, precision=precision, has_dev=dev_data is not None)
    say(_plan_text(plan, config, precision))

    mark = time.perf_counter()
    # Mining only ranks documents, so bf16 runs may rank with the faster OpenVINO bf16 backend (same space).
    base_encoder = DualEncoder(
        _encoder_config(config, config.base_model, backend="openvino-bf16" if precision == "bf16" else "torch")
    )
    rankings = _rankings(config, base_encoder, train_data, dev_data)
    if config.hard_negatives:
        train_data.pairs, mining_notes = pick_negatives(
            rankings,
            train_data,
            count=config.hard_negatives,
            rank_range=config.negative_rank_range,
            seed=config.seed,
            relative_margin=config.negative_relative_margin,
            max_score=config.negative_max_score,
        )
        notes += mining_notes
    timings["mining_seconds"] = time.perf_counter() - mark

    relevant = train_data.relevant
    if config.train_document_tokens is not None:
        train_data = _with_documents_cut(train_data, built.model, config.train_document_tokens)
    datasets, losses, router_mapping = _datasets_and_losses(config, built, train_data)
    _apply_routes_and_prompts(args, config, router_mapping)
    if uses_in_batch_negatives(config.loss) and "contrastive" in datasets:
        rows = [(pair.query_id, (pair.document_id, *pair.negative_ids)) for pair in train_data.pairs]
        args.batch_sampler = QueryAwareSamplerFactory(rows, relevant)
    evaluator, dev_corpus = _dev_evaluator(config, dev_data, rankings) if dev_data is not None else (None, None)

    from sentence_transformers import SentenceTransformerTrainer

    single = len(datasets) == 1
    clock = _step_clock(say, plan, evaluator)
    trainer = SentenceTransformerTrainer(
        model=built.model,
        args=args,
        train_dataset=next(iter(datasets.values())) if single else datasets,
        loss=next(iter(losses.values())) if single else losses,
        evaluator=evaluator,
        callbacks=[clock],
    )
    base_scores = evaluator.score(built.base, step=0, epoch=0.0) if evaluator else None
    evaluation_before = evaluator.seconds if evaluator else 0.0
    if evaluator is not None and base_scores is not None and dev_corpus is not None:
        evaluator.base, evaluator.announce = base_scores, say
        say(
            f"Dev slice before training (the base model): {_figures(base_scores.means())}; searched over "
            f"{dev_corpus['description']}."
        )

    mark = time.perf_counter()
    interrupted = False
    try:
        trainer.train()
    except KeyboardInterrupt:
        # The weights as they are now are still a candidate: score them and let the guard decide.
        interrupted = True
        logger.warning("Training interrupted; the guard compares the model as it is now with the base model.")
    evaluation_during = (evaluator.seconds if evaluator else 0.0) - evaluation_before
    timings["training_seconds"] = time.perf_counter() - mark - evaluation_during

    verdict = None
    if evaluator is not None and base_scores is not None:
        if interrupted:
            evaluator(built.model, steps=trainer.state.global_step, epoch=trainer.state.epoch or 0.0)
            candidates = [evaluator.history[-1]]  # the other checkpoints' weights are not in memory any more
        else:
            candidates = list(evaluator.history)
        verdict = judge(base_scores, candidates, threshold=config.min_improvement_standard_errors)
        if verdict.status == IMPROVED and not interrupted:
            _check_loaded_best(trainer, verdict)
    status = verdict.status if verdict is not None else NOT_CHECKED
    keep_base = status == NO_IMPROVEMENT
    _clear_model_files(output)
    (built.base if keep_base else built.model).save(str(output))

    saved = DualEncoder(_encoder_config(config, str(output)))
    fingerprint = saved.fingerprint
    base_fingerprint = base_encoder.fingerprint
    if config.architecture == "light-query" and fingerprint.document_space != base_fingerprint.document_space:
        raise RuntimeError(  # pragma: no cover - the document tower is frozen; this guards that promise
            "The light-query model's document tower changed during training; its documents would need re-indexing."
        )
    fusion_choice = None
    if dev_data is not None:
        # The fusion weight fits the saved model, so it is chosen now, on the same dev slice as the guard.
        from dual_encoder.training.fusion_dev import tune_trained_model_fusion

        mark = time.perf_counter()
        fusion_choice = tune_trained_model_fusion(config, saved, dev_data, rankings, announce=say)
        timings["fusion_tuning_seconds"] = time.perf_counter() - mark
    timings["evaluation_seconds"] = evaluator.seconds if evaluator else 0.0
    timings["total_seconds"] = time.perf_counter() - started
    plan["measured_seconds_per_step"] = clock.seconds_per_step
    plan["estimated_training_seconds"] = clock.estimated_seconds
    written = write_training_outputs(
        output,
        config=config,
        verdict=verdict,
        saved=saved,
        base_fingerprint=base_fingerprint,
        precision=precision,
        frozen=built.frozen,
        interrupted=interrupted,
        saved_model="base" if keep_base else "trained",
        saved_architecture=config.architecture if not keep_base else "base model (training did not improve it)",
        data={
            "training_pairs": len(train_data.pairs),
            "training_queries": len({p.query_id for p in train_data.pairs}),
            "documents": len(data.documents),
            "dev_queries": len(dev_data.queries) if dev_data else 0,
            "dev_corpus_documents": len(evaluator.corpus) if evaluator else 0,
            "hard_negatives_per_pair": config.hard_negatives,
            "notes": notes,
        },
        dev_corpus=dev_corpus,
        steps=trainer.state.global_step,
        epochs_completed=trainer.state.epoch,
        history=_history(trainer.state.log_history, verdict),
        timings=timings,
        details={
            "plan": plan,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "hybrid_fusion": fusion_choice.to_dict() if fusion_choice is not None else None,
        },
    )
    say(written.report["message"])
    return TrainingResult(
        model_path=output, report=written.report, report_path=written.report_path, plot_path=written.plot_path
    )


def resolve_precision(precision: str) -> str:
    """``auto`` becomes ``bf16`` on a GPU with bfloat16, and on a CPU that computes bfloat16 natively *and* runs a
    transformer layer's training pass faster in bf16 than in fp32 here (:func:`bf16_timing`); else ``fp32``."""
    if precision != "auto":
        return precision
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    timing = _auto_bf16_timing(precision)
    if timing is None:
        return "fp32"
    return "bf16" if timing["bf16_ms"] <= _BF16_MAX_TIME_RATIO * timing["fp32_ms"] else "fp32"


def _auto_bf16_timing(requested: str) -> dict[str, float] | None:
    """The timing ``auto`` decides by, or ``None`` when it decides without one (a forced precision, a GPU, or a
    CPU without native bfloat16)."""
    import torch

    if requested != "auto" or torch.cuda.is_available() or not cpu_has_native_bf16():
        return None
    return bf16_timing()


#: ``auto`` picks bf16 only when its training pass takes at most this share of fp32's (a clear win, not noise).
_BF16_MAX_TIME_RATIO = 0.9


@functools.cache
def bf16_timing() -> dict[str, float]:
    """Milliseconds of one transformer layer's forward and backward pass in fp32 and under bf16 autocast on this
    CPU: MiniLM's width (384, 12 heads, 1,536 hidden), 16 sequences of 128 tokens, medians of 5 runs alternating
    after a warm-up (about 2 s, once per process). The global random state is left as it was.

    Native bfloat16 instructions do not make bf16 training faster everywhere: SciFact training steps took about
    0.4x the fp32 time in bf16 on a 2-vCPU EPYC with AVX-512 BF16, while on a 2-vCPU Xeon whose hypervisor
    exposes AVX-512 BF16 but not AMX a MiniLM step took 1.5x (this pass: 1.8x); see benchmarks/README.md.
    """
    import torch

    times: dict[bool, list[float]] = {False: [], True: []}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(384, 12, 1536, dropout=0.0, batch_first=True)
        tokens = torch.randn(16, 128, 384)

        def one_pass(bf16: bool) -> float:
            begun = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                output = layer(tokens)
            output.float().square().mean().backward()
            layer.zero_grad(set_to_none=True)
            return (time.perf_counter() - begun) * 1000

        for bf16 in (False, True, False, True):  # warm-up: the first passes allocate and pick kernels
            one_pass(bf16)
        for _ in range(5):
            for bf16 in (False, True):
                times[bf16].append(one_pass(bf16))
    return {"fp32_ms": round(statistics.median(times[False]), 1), "bf16_ms": round(statistics.median(times[True]), 1)}


def _auto_precision_note(requested: str, chosen: str) -> str | None:
    """Why ``auto`` chose ``chosen``, when it decided by measuring (``None`` otherwise)."""
    timing = _auto_bf16_timing(requested)
    if timing is None:
        return None
    verdict = "faster" if chosen == "bf16" else f"not at least {1 - _BF16_MAX_TIME_RATIO:.0%} faster"
    return (
        f"This CPU computes bfloat16 natively, and a transformer layer's training pass took {timing['bf16_ms']:g} ms "
        f"in bf16 against {timing['fp32_ms']:g} ms in fp32 here: bf16 is {verdict}, so auto chose {chosen}."
    )


def cpu_has_native_bf16() -> bool:
    """Whether bf16 autocast runs on bfloat16 hardware here: a CUDA device with bf16, or a CPU with AVX-512 BF16
    or AMX (the same CPU capability OpenVINO reports as ``BF16``; without it, bf16 is emulated and slower)."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        flags = ""
    if flags:
        return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))
    try:  # not Linux: ask OpenVINO, which the bf16 encoding backend relies on too
        from dual_encoder.acceleration import import_openvino

        return "BF16" in import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no way to tell: fp32 always runs
        return False


# ------------------------------------------------------------------------------------------------ steps
def _check_output_folder(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise ConfigurationError(f"Output '{output}' is a file; pass a folder to save the trained model in.")
    if output.is_dir() and any(output.iterdir()) and not (output / REPORT_FILE).exists():
        raise ConfigurationError(
            f"Output folder '{output}' is not empty and was not written by a training run; choose a new folder so "
            f"nothing in it is overwritten."
        )


def _encoder_config(config: TrainingConfig, model: str, backend: Backend = "torch") -> EncoderConfig:
    return EncoderConfig(
        model=model,
        backend=backend,
        query_prompt=config.query_prompt,
        document_prompt=config.document_prompt,
        max_seq_length=config.max_seq_length,
        trust_remote_code=config.trust_remote_code,
    )


def _train_and_dev(config: TrainingConfig, data: TrainingData) -> tuple[TrainingData, TrainingData | None]:
    if config.dev_split is None:
        return split_off_dev(data, fraction=config.dev_fraction, seed=config.seed)
    if not Path(config.data).is_dir():
        raise ConfigurationError("dev_split names a BEIR split; it needs a BEIR folder as data.")
    dev = load_training_data(config.data, config.dev_split)
    overlap = {p.query_id for p in dev.pairs} & {p.query_id for p in data.pairs}
    if overlap:
        raise TrainingDataError(
            f"{len(overlap)} queries are in both the '{config.split}' and '{config.dev_split}' splits; the dev "
            f"scores would be measured on training queries."
        )
    return data, dev


def _rankings(
    config: TrainingConfig, encoder: DualEncoder, train_data: TrainingData, dev_data: TrainingData | None
) -> Rankings:
    queries: dict[str, str] = {}
    if config.hard_negatives:
        queries.update({p.query_id: train_data.queries[p.query_id] for p in train_data.pairs})
    if dev_data is not None and config.eval_corpus_size is not None:
        queries.update(dev_data.queries)
    if not queries:
        return Rankings(ids={})
    most_positives = max(len(docs) for docs in train_data.relevant.values())
    # Deep enough that the rank window still holds its negatives after the positives and the margin skip some.
    depth = 2 * max(config.negative_rank_range[1], _HARD_DISTRACTORS_PER_DEV_QUERY) + most_positives
    return rank_documents(
        encoder, queries, train_data.documents, depth=depth, pairs=train_data.pairs, progress_bar=config.progress_bar
    )


def _datasets_and_losses(
    config: TrainingConfig, built: TrainingModel, data: TrainingData
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, str]]]:
    from datasets import Dataset

    datasets: dict[str, Any] = {}
    losses: dict[str, Any] = {}
    router_mapping: dict[str, dict[str, str]] = {}
    contrastive = not (config.architecture == "light-query" and config.light_query_objective == "distill")
    if contrastive:
        columns = _pair_columns(config, data)
        datasets["contrastive"] = Dataset.from_dict(columns)
        losses["contrastive"] = build_loss(
            config.loss,
            built.model,
            scale=config.scale,
            mini_batch_size=config.mini_batch_size,
            margin=config.triplet_margin,
            guide=built.base,
        )
        router_mapping["contrastive"] = {name: "query" if name == "anchor" else "document" for name in columns}
    if config.architecture == "light-query" and config.light_query_objective in ("distill", "both"):
        query_texts = _distillation_texts(data, config.seed)
        teacher = built.base.encode_query(
            query_texts,
            prompt=built.base.prompts.get("query", "") or "",
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        datasets["distill"] = Dataset.from_dict({"query": query_texts, "label": teacher.tolist()})
        losses["distill"] = build_distillation_loss(built.model)
        router_mapping["distill"] = {"query": "query"}
    return datasets, losses, router_mapping


def _with_documents_cut(data: TrainingData, model: Any, tokens: int) -> TrainingData:
    """``data`` with every document cut to its first ``tokens`` tokens (by the document tower's tokenizer).

    The text is cut rather than the model's limit lowered, so the model itself (its dev evaluation, what it
    saves) keeps the limit it has at inference.
    """
    tokenizer = _document_tokenizer(model)
    ids = sorted(data.documents)
    encoded = tokenizer(
        [data.documents[i] for i in ids],
        add_special_tokens=False,
        truncation=True,
        max_length=tokens,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    documents = {
        document_id: data.documents[document_id][: offsets[-1][1]] if offsets else data.documents[document_id]
        for document_id, offsets in zip(ids, encoded["offset_mapping"])
    }
    return replace(data, documents=documents)


def _document_tokenizer(model: Any) -> Any:
    import torch
    from sentence_transformers.base.modules import Router

    first = model[0]
    if isinstance(first, Router):
        # A Router keeps each route as an nn.Sequential of its modules.
        document_route = first.sub_modules["document"]
        assert isinstance(document_route, torch.nn.Sequential)
        first = document_route[0]
    return first.tokenizer


def _distillation_texts(data: TrainingData, seed: int) -> list[str]:
    """The training queries, plus query-sized pieces of the documents: distillation needs query-like text, not
    labels. Each document gives its opening and its sentences (each cut to a query's length), which teaches
    the light tower the corpus's vocabulary at little cost; beyond :data:`_DISTILLATION_MAX_TEXTS` a seeded
    sample of the pieces is kept, so a large corpus does not turn distillation into the whole run."""
    queries = {data.queries[p.query_id] for p in data.pairs}
    pieces = query_sized_pieces(data.documents.values(), _DISTILLATION_OPENING_WORDS)
    pieces -= queries
    budget = max(0, _DISTILLATION_MAX_TEXTS - len(queries))
    kept = sorted(pieces)
    if len(kept) > budget:
        kept = sorted(random.Random(seed).sample(kept, budget))
    return sorted(queries) + kept


def _pair_columns(config: TrainingConfig, data: TrainingData) -> dict[str, list[str]]:
    counts = {len(pair.negative_ids) for pair in data.pairs}
    negatives = min(counts)
    if len(counts) > 1 and not config.hard_negatives:
        with_negative = sum(1 for pair in data.pairs if pair.negative_ids)
        raise TrainingDataError(
            f"{with_negative} of {len(data.pairs)} training lines have a 'negative' and the others do not. Give every "
            f"line a negative, or none, or turn on hard-negative mining so the rest get one."
        )
    if config.loss == "triplet" and negatives == 0:
        raise TrainingDataError(
            "The triplet loss needs a negative for every pair: add 'negative' to the training lines or set "
            "hard_negatives to 1 or more."
        )
    columns = {
        "anchor": [data.queries[p.query_id] for p in data.pairs],
        "positive": [data.documents[p.document_id] for p in data.pairs],
    }
    if config.loss == "triplet":
        negatives = 1  # the triplet loss takes exactly one negative per row
    for position in range(negatives):
        columns[f"negative_{position + 1}"] = [data.documents[p.negative_ids[position]] for p in data.pairs]
    return columns


def _dev_evaluator(config: TrainingConfig, dev: TrainingData, rankings: Rankings) -> tuple[Any, dict[str, Any]]:
    hard = [doc for query in dev.queries for doc in rankings.get(query)[:_HARD_DISTRACTORS_PER_DEV_QUERY]]
    corpus = evaluation_corpus(dev, size=config.eval_corpus_size, seed=config.seed, hard_distractors=hard)
    evaluator = _make_dev_evaluator(
        queries=dict(dev.queries),
        corpus=corpus,
        relevant=dev.relevant,
        query_prompt=config.query_prompt,
        document_prompt=config.document_prompt,
        batch_size=config.batch_size,
    )
    return evaluator, describe_evaluation_corpus(dev, corpus, hard)


def _make_dev_evaluator(
    *,
    queries: dict[str, str],
    corpus: dict[str, str],
    relevant: dict[str, set[str]],
    query_prompt: str | None,
    document_prompt: str | None,
    batch_size: int,
) -> Any:
    """A sentence-transformers evaluator that scores every dev query separately (the guard needs per-query
    figures for its noise estimate) and keeps each evaluation in ``history``."""
    import numpy as np

    try:
        from sentence_transformers.base.evaluation import BaseEvaluator
    except ImportError:  # pragma: no cover - older layouts of sentence-transformers
        # The fallback class plays the same role under its older name.
        from sentence_transformers.evaluation import SentenceEvaluator as BaseEvaluator  # type: ignore[no-redef]

    query_ids = [query for query in queries if relevant.get(query)]
    corpus_ids = list(corpus)

    class DevEvaluator(BaseEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.primary_metric = f"{_DEV_NAME}_{GUARD_METRIC}"
            self.greater_is_better = True
            self.corpus = corpus
            self.history: list[DevScores] = []
            self.seconds = 0.0
            #: Set once the base model is scored: each evaluation is then announced with its gain over it.
            self.base: DevScores | None = None
            self.announce: Callable[[str], None] | None = None

        def score(self, model: Any, *, step: int, epoch: float | None) -> DevScores:
            started = time.perf_counter()
            options = {"batch_size": batch_size, "convert_to_numpy": True, "show_progress_bar": False}
            query_vectors = model.encode_query([queries[q] for q in query_ids], prompt=query_prompt, **options)
            corpus_vectors = model.encode_document([corpus[d] for d in corpus_ids], prompt=document_prompt, **options)
            similarities = model.similarity(query_vectors, corpus_vectors).float().numpy()
            depth = min(10, len(corpus_ids))
            top = np.argpartition(-similarities, depth - 1, axis=1)[:, :depth]
            ranked = [
                [corpus_ids[i] for i in row[np.argsort(-similarities[number, row], kind="stable")]]
                for number, row in enumerate(top)
            ]
            per_query = ranking_metrics(ranked, [relevant[q] for q in query_ids])
            scores = DevScores(step=step, epoch=epoch, per_query=per_query)
            self.seconds += time.perf_counter() - started
            return scores

        def __call__(self, model: Any, output_path: str | None = None, epoch: float = -1, steps: int = -1) -> dict:
            scores = self.score(model, step=steps, epoch=epoch)
            self.history.append(scores)
            if self.base is not None and self.announce is not None:
                gain, error = paired_gain(scores, self.base)
                self.announce(
                    f"Dev slice at step {steps}: {_figures(scores.means())}; nDCG@10 gain over the base "
                    f"{gain:+.4f} ± {error:.4f} (standard error)."
                )
            return {f"{_DEV_NAME}_{name}": value for name, value in scores.means().items()}

    return DevEvaluator()


def _figures(means: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in means.items())


def _check_loaded_best(trainer: Any, verdict: Verdict) -> None:
    """The trainer reloads its best checkpoint by the same metric; make sure it is the one the guard chose."""
    best = trainer.state.best_model_checkpoint
    if best is not None and not best.endswith(f"checkpoint-{verdict.chosen_step}"):
        raise RuntimeError(  # pragma: no cover - both pick the highest mean dev nDCG@10, earliest on ties
            f"The trainer reloaded {best}, but the guard chose the checkpoint of step {verdict.chosen_step}."
        )


def _clear_model_files(output: Path) -> None:
    """Remove what an earlier run saved in ``output`` (checkpoints stay), so the saved folder holds exactly one
    model."""
    for entry in output.iterdir() if output.is_dir() else []:
        if entry.name == CHECKPOINTS_FOLDER:
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _dataset_sizes(config: TrainingConfig, data: TrainingData) -> list[int]:
    sizes = []
    if not (config.architecture == "light-query" and config.light_query_objective == "distill"):
        sizes.append(len(data.pairs))
    if config.architecture == "light-query" and config.light_query_objective in ("distill", "both"):
        sizes.append(len(_distillation_texts(data, config.seed)))
    return sizes


def _apply_routes_and_prompts(args: Any, config: TrainingConfig, router_mapping: dict[str, dict[str, str]]) -> None:
    """Send each dataset column to its tower, with its role prompt (both keyed per dataset when there are
    several datasets, as sentence-transformers expects)."""
    prompts = {}
    for dataset_name, mapping in router_mapping.items():
        column_prompts = {
            column: (config.query_prompt if route == "query" else config.document_prompt)
            for column, route in mapping.items()
        }
        column_prompts = {column: prompt for column, prompt in column_prompts.items() if prompt}
        if column_prompts:
            prompts[dataset_name] = column_prompts
    single = len(router_mapping) == 1
    # A Siamese model has no routes; an asymmetric one sends queries and documents to their towers.
    if config.architecture != "siamese":
        args.router_mapping = next(iter(router_mapping.values())) if single else router_mapping
    if prompts:
        args.prompts = prompts.get(next(iter(router_mapping))) if single else prompts


def _plan(config: TrainingConfig, train_data: TrainingData, dev_data: TrainingData | None) -> dict[str, Any]:
    """Pairs, queries, steps and the budget, before anything expensive runs."""
    sizes = _dataset_sizes(config, train_data)
    steps_per_epoch = sum(math.ceil(rows / config.batch_size) for rows in sizes)
    epoch_steps = math.ceil(steps_per_epoch * config.epochs)
    total_steps = min(epoch_steps, config.max_steps) if config.max_steps else epoch_steps
    per_epoch = steps_per_epoch // config.evaluations_per_epoch
    # Without a dev slice there is nothing to choose between, so checkpoints follow the epochs only.
    minimum = _MIN_EVALUATIONS if dev_data is not None else 1
    eval_steps = max(1, min(per_epoch, math.ceil(total_steps / minimum)))
    per_query = [len(docs) for docs in train_data.relevant.values()]
    rows = sum(sizes)
    return {
        "training_pairs": len(train_data.pairs),
        "training_queries": len(per_query),
        "positives_per_query_mean": round(sum(per_query) / len(per_query), 2),
        "positives_per_query_max": max(per_query),
        "dev_queries": len(dev_data.queries) if dev_data else 0,
        "batch_size": config.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "epochs": config.epochs,
        "steps_for_epochs": epoch_steps,
        "budget_steps": config.max_steps,
        "budget_binds": total_steps < epoch_steps,
        "steps": total_steps,
        "epochs_covered": round(total_steps / steps_per_epoch, 2),
        "rows_seen": min(total_steps * config.batch_size, round(rows * config.epochs)),
        "checkpoint_every_steps": eval_steps,
        "evaluation_every_steps": eval_steps if dev_data else None,
        "evaluations": (total_steps // eval_steps + (1 if total_steps % eval_steps else 0)) if dev_data else 0,
    }


def _plan_text(plan: dict[str, Any], config: TrainingConfig, precision: str) -> str:
    lines = [
        f"Plan: {plan['training_pairs']:,} training pairs over {plan['training_queries']:,} queries "
        f"(positives per query: {plan['positives_per_query_mean']:g} on average, at most "
        f"{plan['positives_per_query_max']:,}); batch {plan['batch_size']}, {plan['steps_per_epoch']:,} steps per "
        f"epoch.",
    ]
    if plan["budget_binds"]:
        lines.append(
            f"Budget: {config.epochs:g} epochs would take {plan['steps_for_epochs']:,} steps; the step budget "
            f"(max_steps {plan['budget_steps']:,}) stops training after {plan['steps']:,} steps, "
            f"{plan['epochs_covered']:g} epochs: about {plan['rows_seen']:,} of the {plan['training_pairs']:,} pairs "
            f"are seen."
        )
    else:
        budget = f" (within the budget of {plan['budget_steps']:,})" if plan["budget_steps"] else " (no step budget)"
        lines.append(f"Steps: {plan['steps']:,} = {config.epochs:g} epochs{budget}.")
    if plan["dev_queries"]:
        lines.append(
            f"Dev slice: {plan['dev_queries']:,} queries, evaluated before training and every "
            f"{plan['evaluation_every_steps']:,} steps ({plan['evaluations']} times); the best checkpoint is saved "
            f"only if it beats the base model by more than {config.min_improvement_standard_errors:g} standard errors."
        )
    else:
        lines.append("No dev slice: the trained model cannot be checked against the base model and is saved as is.")
    lines.append(f"Precision: {precision}. The time estimate follows after the first steps.")
    note = _auto_precision_note(config.precision, precision)
    if note:
        lines.append(note)
    if precision == "bf16" and not cpu_has_native_bf16():
        # Measured on an AVX2-only CPU: GIST's steps took minutes each in emulated bf16 (21 s in fp32).
        lines.append(
            "This CPU has no native bfloat16 (AVX-512 BF16 or AMX), so bf16 is emulated: training runs slower than "
            "in fp32, some losses (GIST) many times slower. Use --precision auto (fp32 here) unless you measured "
            "otherwise."
        )
    return "\n".join(lines)


def _step_clock(announce: Callable[[str], None], plan: dict[str, Any], evaluator: Any) -> Any:
    """A trainer callback that times the first steps and announces the estimated training time, and asks for
    a dev evaluation at the last step when the evaluation schedule would miss it."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds_per_step: float | None = None
            self.estimated_seconds: float | None = None
            self._first_step_done: float | None = None
            self._evaluation_seconds_then = 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            step = state.global_step
            spent = evaluator.seconds if evaluator is not None else 0.0
            if step == 1:
                self._first_step_done, self._evaluation_seconds_then = time.perf_counter(), spent
            timed = min(_TIMED_STEPS, plan["steps"] - 1)
            if self._first_step_done is not None and timed >= 1 and step == 1 + timed:
                elapsed = time.perf_counter() - self._first_step_done - (spent - self._evaluation_seconds_then)
                self.seconds_per_step = elapsed / timed
                evaluation = evaluator.seconds / max(1, len(evaluator.history) + 1) if evaluator is not None else 0.0
                self.estimated_seconds = self.seconds_per_step * plan["steps"] + evaluation * plan["evaluations"]
                announce(
                    f"Time estimate from steps 2-{1 + timed}: {self.seconds_per_step:.2f} s per step, so about "
                    f"{self.estimated_seconds / 60:.1f} min for {plan['steps']:,} steps and {plan['evaluations']} dev "
                    f"evaluations of about {evaluation:.0f} s."
                )
            every = plan["evaluation_every_steps"]
            if evaluator is not None and every and step >= state.max_steps and step % every:
                control.should_evaluate = True
            return control

    return StepClock()


def _training_arguments(
    config: TrainingConfig, output: Path, plan: dict[str, Any], *, precision: str, has_dev: bool
) -> Any:
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    eval_steps = plan["checkpoint_every_steps"]
    try:
        return SentenceTransformerTrainingArguments(
            output_dir=str(output / CHECKPOINTS_FOLDER),
            num_train_epochs=config.epochs,
            # The plan's step count is the epochs or the budget, whichever is smaller.
            max_steps=plan["steps"],
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the total steps
            weight_decay=config.weight_decay,
            seed=config.seed,
            data_seed=config.seed,
            bf16=precision == "bf16",
            # Without this, transformers refuses bf16 on a machine that has no GPU.
            use_cpu=not torch.cuda.is_available(),
            batch_sampler=(
                BatchSamplers.NO_DUPLICATES if uses_in_batch_negatives(config.loss) else BatchSamplers.BATCH_SAMPLER
            ),
            eval_strategy="steps" if has_dev else "no",
            eval_steps=eval_steps if has_dev else None,
            save_strategy="steps",
            save_steps=eval_steps,
            save_total_limit=1,
            load_best_model_at_end=has_dev,
            metric_for_best_model=f"eval_{_DEV_NAME}_{GUARD_METRIC}" if has_dev else None,
            greater_is_better=True,
            logging_steps=max(1, eval_steps // 5),
            logging_first_step=True,
            report_to="none",
            disable_tqdm=not config.progress_bar,
            dataloader_drop_last=False,
            dataloader_pin_memory=False,
        )
    except ValueError as error:
        raise ConfigurationError(f"The training settings cannot run on this machine: {error}") from error


def _history(log_history: list[dict[str, Any]], verdict: Verdict | None) -> dict[str, list[dict[str, Any]]]:
    losses = [
        {"step": entry["step"], "epoch": entry.get("epoch"), "loss": entry["loss"]}
        for entry in log_history
        if "loss" in entry
    ]
    return {"loss": losses, "dev": list(verdict.checkpoints) if verdict is not None else []}
