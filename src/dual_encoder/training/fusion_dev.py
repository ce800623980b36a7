"""Choosing a trained model's hybrid fusion weight on the training run's dev slice.

:func:`tune_trained_model_fusion` runs at the end of ``dual-encoder train``; :func:`tune_model_fusion` does the
same for any model folder (``dual-encoder tune-fusion``), holding out the dev slice exactly as training does
(same data, split, fraction and seed give the same queries). Both record the choice in the model folder as
``hybrid_fusion.json`` (:mod:`dual_encoder.fusion_tuning`).

The dev corpus matters for a fair choice. Training searches a sample of the corpus during evaluation (the dev
positives, the base model's top 10 per dev query, random documents); a sample that holds only the dense side's
hard distractors makes BM25 look better than it is on the whole corpus. So the fusion is chosen on the same
kind of sample with BM25's own top 10 per dev query added (:func:`fusion_dev_corpus`), or on the whole corpus.

Example::

    choice = tune_model_fusion("models/scifact", "../shared/data/scifact")
    print(choice.message())
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dual_encoder.fusion_tuning import FusionChoice, choose_fusion_weight, model_folder, write_fusion_choice
from dual_encoder.keyword import KeywordConfig, KeywordIndex
from dual_encoder.training.data import (
    TrainingData,
    TrainingDataError,
    evaluation_corpus,
    load_training_data,
    split_off_dev,
)

if TYPE_CHECKING:
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.training.config import TrainingConfig
    from dual_encoder.training.hard_negatives import Rankings

__all__ = ["fusion_dev_corpus", "held_out_dev_slice", "tune_model_fusion", "tune_trained_model_fusion"]

#: Distractors taken from each side's ranking per dev query, as the training evaluation takes from the base model.
DISTRACTORS_PER_SIDE = 10


def fusion_dev_corpus(
    dev: TrainingData,
    *,
    size: int | None,
    seed: int,
    dense_distractors: Sequence[str] = (),
    keyword_config: KeywordConfig | None = None,
) -> dict[str, str]:
    """The documents the fusion is chosen on: every document when ``size`` is ``None`` (or covers the corpus),
    else the dev positives, ``dense_distractors``, BM25's top :data:`DISTRACTORS_PER_SIDE` over the whole corpus
    for each dev query, then random documents up to ``size`` (all seeded, as
    :func:`~dual_encoder.training.data.evaluation_corpus`)."""
    if size is None or size >= len(dev.documents):
        return dict(dev.documents)
    document_ids = list(dev.documents)
    index = KeywordIndex(keyword_config)
    index.set_rows(list(range(len(document_ids))), [dev.documents[doc] for doc in document_ids])
    keyword_distractors = [
        document_ids[slot]
        for query in dev.queries.values()
        for slot in index.search(query, DISTRACTORS_PER_SIDE)[0].tolist()
    ]
    return evaluation_corpus(dev, size=size, seed=seed, hard_distractors=[*dense_distractors, *keyword_distractors])


def _qrels(dev: TrainingData) -> dict[str, dict[str, int]]:
    return {query: dict.fromkeys(documents, 1) for query, documents in dev.relevant.items()}


def tune_trained_model_fusion(
    config: TrainingConfig,
    encoder: DualEncoder,
    dev: TrainingData,
    rankings: Rankings,
    *,
    announce: Callable[[str], None] | None = None,
) -> FusionChoice:
    """Choose and record the fusion of the model a training run saved in ``config.output``.

    The dev corpus is the training evaluation's kind of sample (``config.eval_corpus_size``, the base model's top
    10 per dev query from ``rankings``) plus BM25's top 10 per dev query; ``None`` searches the whole corpus.
    """
    dense_distractors = [doc for query in dev.queries for doc in rankings.get(query)[:DISTRACTORS_PER_SIDE]]
    corpus = fusion_dev_corpus(dev, size=config.eval_corpus_size, seed=config.seed, dense_distractors=dense_distractors)
    choice = choose_fusion_weight(
        encoder,
        dev.queries,
        corpus,
        _qrels(dev),
        progress_bar=config.progress_bar,
        source={
            "by": "dual-encoder train",
            "data": str(config.data),
            "split": config.split,
            "dev_split": config.dev_split,
            "dev_fraction": config.dev_fraction if config.dev_split is None else None,
            "seed": config.seed,
            "corpus": "whole" if len(corpus) == len(dev.documents) else f"sample of {len(corpus)}",
            "fingerprint": encoder.fingerprint.to_dict(),
        },
    )
    write_fusion_choice(config.output, choice)
    if announce is not None:
        announce(choice.message())
    return choice


def held_out_dev_slice(
    data: str | Path,
    *,
    split: str = "train",
    dev_split: str | None = None,
    dev_fraction: float = 0.1,
    seed: int = 42,
) -> TrainingData:
    """The dev slice ``dual-encoder train`` holds out with the same options: ``dev_fraction`` of the ``split``
    queries drawn with ``seed``, or the ``dev_split`` of a BEIR folder.

    :raises TrainingDataError: the options hold out no query.
    """
    if dev_split is not None:
        if not Path(data).is_dir():
            raise TrainingDataError("dev_split names a BEIR split; it needs a BEIR folder as data.")
        return load_training_data(data, dev_split)
    _, dev = split_off_dev(load_training_data(data, split), fraction=dev_fraction, seed=seed)
    if dev is None:
        raise TrainingDataError(
            f"A dev fraction of {dev_fraction} holds out no query of '{data}'; raise it (training's default is 0.1)."
        )
    return dev


def tune_model_fusion(
    model: str,
    data: str | Path,
    *,
    split: str = "train",
    dev_split: str | None = None,
    dev_fraction: float = 0.1,
    seed: int = 42,
    keyword_config: KeywordConfig | None = None,
    encoder_options: dict[str, Any] | None = None,
    write: bool = True,
    progress_bar: bool = True,
) -> tuple[FusionChoice, Path | None]:
    """Choose the fusion for ``model`` on the dev slice training would hold out of ``data``, searching the whole
    corpus, and record it in the model folder.

    :param model: A model folder (the record is written there) or a model name (nothing is written).
    :param encoder_options: Further encoder-definition fields (prompts, backend, ``max_seq_length``).
    :param write: ``False``: choose only.
    :returns: The choice and the record's path (``None`` when nothing was written).
    """
    from dual_encoder.encoder import DualEncoder

    dev = held_out_dev_slice(data, split=split, dev_split=dev_split, dev_fraction=dev_fraction, seed=seed)
    encoder = DualEncoder({**(encoder_options or {}), "model": model})
    choice = choose_fusion_weight(
        encoder,
        dev.queries,
        dict(dev.documents),
        _qrels(dev),
        keyword_config=keyword_config,
        progress_bar=progress_bar,
        source={
            "by": "dual-encoder tune-fusion",
            "data": str(data),
            "split": split,
            "dev_split": dev_split,
            "dev_fraction": dev_fraction if dev_split is None else None,
            "seed": seed,
            "corpus": "whole",
            "fingerprint": encoder.fingerprint.to_dict(),
        },
    )
    folder = model_folder(model)
    path = write_fusion_choice(folder, choice) if write and folder is not None else None
    return choice, path
