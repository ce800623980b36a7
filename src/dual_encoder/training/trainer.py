"""One training run, end to end, on sentence-transformers' trainer.

:func:`train` checks the configuration and builds the model first (a bad architecture fails before any data
is read), reads and checks the data, mines hard negatives with the base encoder, holds out a dev slice, and
trains with the chosen loss while evaluating on the dev slice. The best checkpoint by dev nDCG@10 is what
ends up in ``output``, together with:

- ``README.md``: the model card sentence-transformers writes;
- ``dual_encoder.json``: the encoder fingerprint (document space and query tower) and how it was trained;
- ``training_report.json`` and ``training_curves.png``: loss and dev metrics over the run.

Example::

    result = train(TrainingConfig(data="../shared/data/scifact", output="models/scifact"))
    result.report["dev_after"]["ndcg@10"]
    DualEncoder(str(result.model_path))          # loads like any other model folder
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dual_encoder.config import EncoderConfig
from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import ConfigurationError
from dual_encoder.training.architectures import TrainingModel, build_training_model
from dual_encoder.training.config import TrainingConfig
from dual_encoder.training.data import (
    TrainingData,
    TrainingDataError,
    evaluation_corpus,
    load_training_data,
    split_off_dev,
)
from dual_encoder.training.hard_negatives import pick_negatives, rank_documents
from dual_encoder.training.losses import build_distillation_loss, build_loss, uses_in_batch_negatives
from dual_encoder.training.report import plot_training_curves

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "dual_encoder.json"
REPORT_FILE = "training_report.json"
PLOT_FILE = "training_curves.png"
CHECKPOINTS_FOLDER = "checkpoints"
#: Dev metrics reported before and after training, as the evaluator names them.
DEV_METRICS = {"ndcg@10": "cosine_ndcg@10", "recall@100": "cosine_recall@100", "mrr@10": "cosine_mrr@10"}
_DEV_NAME = "dev"
_HARD_DISTRACTORS_PER_DEV_QUERY = 10
_DISTILLATION_OPENING_WORDS = 24
#: At most this many texts (queries first, then document pieces) per distillation epoch.
_DISTILLATION_MAX_TEXTS = 20_000


@dataclass(frozen=True)
class TrainingResult:
    model_path: Path
    report: dict[str, Any]
    report_path: Path
    plot_path: Path


def train(config: TrainingConfig | dict[str, Any]) -> TrainingResult:
    """Train a dual encoder as ``config`` says and save it, with its report, to ``config.output``."""
    import transformers

    config = config if isinstance(config, TrainingConfig) else TrainingConfig.from_dict(config)
    output = Path(config.output)
    _check_output_folder(output)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    transformers.set_seed(config.seed)

    built = build_training_model(config)
    data = load_training_data(config.data, config.split)
    train_data, dev_data = _train_and_dev(config, data)
    notes = list(data.notes)

    # Training arguments are validated now, so a setting the machine cannot run fails before the mining pass.
    steps_per_epoch = sum(math.ceil(rows / config.batch_size) for rows in _dataset_sizes(config, train_data))
    args = _training_arguments(config, output, steps_per_epoch, has_dev=dev_data is not None)

    mark = time.perf_counter()
    # Mining only ranks documents, so bf16 runs may rank with the faster OpenVINO bf16 backend (same space).
    base_encoder = DualEncoder(
        _encoder_config(config, config.base_model, backend="openvino-bf16" if config.precision == "bf16" else "torch")
    )
    rankings = _rankings(config, base_encoder, train_data, dev_data)
    if config.hard_negatives:
        train_data.pairs, mining_notes = pick_negatives(
            rankings, train_data, count=config.hard_negatives, rank_range=config.negative_rank_range,
            seed=config.seed,
        )
        notes += mining_notes
    timings["mining_seconds"] = time.perf_counter() - mark

    if config.train_document_tokens is not None:
        train_data = _with_documents_cut(train_data, built.model, config.train_document_tokens)
    datasets, losses, router_mapping = _datasets_and_losses(config, built, train_data)
    _apply_routes_and_prompts(args, config, router_mapping)
    evaluator = _dev_evaluator(config, dev_data, rankings) if dev_data is not None else None

    from sentence_transformers import SentenceTransformerTrainer

    single = len(datasets) == 1
    trainer = SentenceTransformerTrainer(
        model=built.model,
        args=args,
        train_dataset=next(iter(datasets.values())) if single else datasets,
        loss=next(iter(losses.values())) if single else losses,
        evaluator=evaluator,
    )
    mark = time.perf_counter()
    dev_before = _dev_metrics(evaluator, built.model) if evaluator else None
    timings["evaluation_seconds"] = time.perf_counter() - mark

    mark = time.perf_counter()
    interrupted = False
    try:
        trainer.train()
    except KeyboardInterrupt:
        # The weights as they are now are still a valid model: save them rather than lose the run.
        interrupted = True
        logger.warning("Training interrupted; saving the model as it is now to %s.", output)
    timings["training_seconds"] = time.perf_counter() - mark

    mark = time.perf_counter()
    dev_after = _dev_metrics(evaluator, built.model) if evaluator else None
    timings["evaluation_seconds"] += time.perf_counter() - mark
    built.model.save(str(output))

    trained = DualEncoder(_encoder_config(config, str(output)))
    fingerprint = trained.fingerprint
    base_fingerprint = base_encoder.fingerprint
    if config.architecture == "light-query" and fingerprint.document_space != base_fingerprint.document_space:
        raise RuntimeError(  # pragma: no cover - the document tower is frozen; this guards that promise
            "The light-query model's document tower changed during training; its documents would need re-indexing."
        )
    timings["total_seconds"] = time.perf_counter() - started
    report = {
        "config": config.to_dict(),
        "architecture": config.architecture,
        "frozen": built.frozen,
        "interrupted": interrupted,
        "data": {
            "training_pairs": len(train_data.pairs),
            "training_queries": len({p.query_id for p in train_data.pairs}),
            "documents": len(data.documents),
            "dev_queries": len(dev_data.queries) if dev_data else 0,
            "dev_corpus_documents": len(evaluator.corpus) if evaluator else 0,
            "hard_negatives_per_pair": config.hard_negatives,
            "notes": notes,
        },
        "steps": trainer.state.global_step,
        "epochs_completed": trainer.state.epoch,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "dev_before": dev_before,
        "dev_after": dev_after,
        "history": _history(trainer.state.log_history),
        "timings": timings,
        "fingerprint": fingerprint.to_dict(),
        "base_fingerprint": base_fingerprint.to_dict(),
        "document_index_still_valid": fingerprint.document_space == base_fingerprint.document_space,
        "machine": _machine(),
    }
    report_path = output / REPORT_FILE
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (output / FINGERPRINT_FILE).write_text(
        json.dumps(
            {
                "fingerprint": fingerprint.to_dict(),
                "encoder": trained.config.to_dict(),
                "trained_from": config.base_model,
                "architecture": config.architecture,
                "document_index_still_valid_for_base_model": report["document_index_still_valid"],
            },
            indent=2,
        ) + "\n",
        encoding="utf-8",
    )
    plot_path = plot_training_curves(report, output / PLOT_FILE)
    return TrainingResult(model_path=output, report=report, report_path=report_path, plot_path=plot_path)


# ------------------------------------------------------------------------------------------------ steps
def _check_output_folder(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise ConfigurationError(f"Output '{output}' is a file; pass a folder to save the trained model in.")
    if output.is_dir() and any(output.iterdir()) and not (output / REPORT_FILE).exists():
        raise ConfigurationError(
            f"Output folder '{output}' is not empty and was not written by a training run; choose a new folder so "
            f"nothing in it is overwritten."
        )


def _encoder_config(config: TrainingConfig, model: str, backend: str = "torch") -> EncoderConfig:
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


def _rankings(config, encoder, train_data, dev_data) -> dict[str, list[str]]:
    queries: dict[str, str] = {}
    if config.hard_negatives:
        queries.update({p.query_id: train_data.queries[p.query_id] for p in train_data.pairs})
    if dev_data is not None and config.eval_corpus_size is not None:
        queries.update(dev_data.queries)
    if not queries:
        return {}
    most_positives = max(len(docs) for docs in train_data.relevant.values())
    depth = max(config.negative_rank_range[1], _HARD_DISTRACTORS_PER_DEV_QUERY) + most_positives + config.hard_negatives
    return rank_documents(encoder, queries, train_data.documents, depth=depth, progress_bar=config.progress_bar)


def _datasets_and_losses(config: TrainingConfig, built: TrainingModel, data: TrainingData):
    from datasets import Dataset

    datasets: dict[str, Any] = {}
    losses: dict[str, Any] = {}
    router_mapping: dict[str, dict[str, str]] = {}
    contrastive = not (config.architecture == "light-query" and config.light_query_objective == "distill")
    if contrastive:
        columns = _pair_columns(config, data)
        datasets["contrastive"] = Dataset.from_dict(columns)
        losses["contrastive"] = build_loss(
            config.loss, built.model, scale=config.scale, mini_batch_size=config.mini_batch_size,
            margin=config.triplet_margin,
        )
        router_mapping["contrastive"] = {name: "query" if name == "anchor" else "document" for name in columns}
    if config.architecture == "light-query" and config.light_query_objective in ("distill", "both"):
        query_texts = _distillation_texts(data, config.seed)
        teacher = built.base.encode_query(
            query_texts, prompt=built.base.prompts.get("query", "") or "", convert_to_numpy=True,
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
        [data.documents[i] for i in ids], add_special_tokens=False, truncation=True, max_length=tokens,
        return_offsets_mapping=True, return_attention_mask=False, return_token_type_ids=False, verbose=False,
    )
    documents = {
        document_id: data.documents[document_id][: offsets[-1][1]] if offsets else data.documents[document_id]
        for document_id, offsets in zip(ids, encoded["offset_mapping"])
    }
    return replace(data, documents=documents)


def _document_tokenizer(model: Any) -> Any:
    from sentence_transformers.base.modules import Router

    first = model[0]
    if isinstance(first, Router):
        first = first.sub_modules["document"][0]
    return first.tokenizer


def _distillation_texts(data: TrainingData, seed: int) -> list[str]:
    """The training queries, plus query-sized pieces of the documents: distillation needs query-like text, not
    labels. Each document gives its opening and its sentences (each cut to a query's length), which teaches
    the light tower the corpus's vocabulary at little cost; beyond :data:`_DISTILLATION_MAX_TEXTS` a seeded
    sample of the pieces is kept, so a large corpus does not turn distillation into the whole run."""
    queries = {data.queries[p.query_id] for p in data.pairs}
    pieces: set[str] = set()
    for text in data.documents.values():
        words = text.split()
        pieces.add(" ".join(words[:_DISTILLATION_OPENING_WORDS]))
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            sentence_words = sentence.split()
            if len(sentence_words) >= 4:
                pieces.add(" ".join(sentence_words[:_DISTILLATION_OPENING_WORDS]))
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


def _dev_evaluator(config: TrainingConfig, dev: TrainingData, rankings: dict[str, list[str]]):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    hard = [doc for query in dev.queries for doc in rankings.get(query, [])[:_HARD_DISTRACTORS_PER_DEV_QUERY]]
    corpus = evaluation_corpus(dev, size=config.eval_corpus_size, seed=config.seed, hard_distractors=hard)
    return InformationRetrievalEvaluator(
        queries=dict(dev.queries),
        corpus=corpus,
        relevant_docs=dev.relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[10],
        precision_recall_at_k=[10, 100],
        map_at_k=[100],
        name=_DEV_NAME,
        write_csv=False,
        query_prompt=config.query_prompt,
        corpus_prompt=config.document_prompt,
        show_progress_bar=False,
    )


def _dev_metrics(evaluator, model) -> dict[str, float]:
    scores = evaluator(model)
    return {short: float(scores[f"{_DEV_NAME}_{long}"]) for short, long in DEV_METRICS.items()}


def _dataset_sizes(config: TrainingConfig, data: TrainingData) -> list[int]:
    sizes = []
    if not (config.architecture == "light-query" and config.light_query_objective == "distill"):
        sizes.append(len(data.pairs))
    if config.architecture == "light-query" and config.light_query_objective in ("distill", "both"):
        sizes.append(len(_distillation_texts(data, config.seed)))
    return sizes


def _apply_routes_and_prompts(args, config: TrainingConfig, router_mapping: dict[str, dict[str, str]]) -> None:
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


def _training_arguments(config: TrainingConfig, output: Path, steps_per_epoch: int, *, has_dev: bool):
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    total_steps = config.max_steps or math.ceil(steps_per_epoch * config.epochs)
    eval_steps = max(1, min(total_steps, steps_per_epoch // config.evaluations_per_epoch))
    try:
        return SentenceTransformerTrainingArguments(
            output_dir=str(output / CHECKPOINTS_FOLDER),
            num_train_epochs=config.epochs,
            max_steps=config.max_steps or -1,
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the total steps
            weight_decay=config.weight_decay,
            seed=config.seed,
            data_seed=config.seed,
            bf16=config.precision == "bf16",
            # Without this, transformers refuses bf16 on a machine that has no GPU.
            use_cpu=not torch.cuda.is_available(),
            batch_sampler=BatchSamplers.NO_DUPLICATES if uses_in_batch_negatives(config.loss) else BatchSamplers.BATCH_SAMPLER,
            eval_strategy="steps" if has_dev else "no",
            eval_steps=eval_steps if has_dev else None,
            save_strategy="steps",
            save_steps=eval_steps,
            save_total_limit=1,
            load_best_model_at_end=has_dev,
            metric_for_best_model=f"eval_{_DEV_NAME}_{DEV_METRICS['ndcg@10']}" if has_dev else None,
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



def _history(log_history: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    losses, evaluations = [], []
    for entry in log_history:
        if "loss" in entry:
            losses.append({"step": entry["step"], "epoch": entry.get("epoch"), "loss": entry["loss"]})
        key = f"eval_{_DEV_NAME}_{DEV_METRICS['ndcg@10']}"
        if key in entry:
            evaluations.append(
                {"step": entry["step"], "epoch": entry.get("epoch")}
                | {short: entry[f"eval_{_DEV_NAME}_{long}"] for short, long in DEV_METRICS.items()}
            )
    return {"loss": losses, "dev": evaluations}


def _machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
