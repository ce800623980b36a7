"""The guard: a training run never saves a model that is not measurably better than the model it started from.

The dev slice is scored per query, for the base model and for every checkpoint. The best checkpoint by mean
dev nDCG@10 replaces the base only if its gain over the base is larger than the dev slice's noise:

- the *gain* is the mean over dev queries of ``nDCG@10(checkpoint) - nDCG@10(base)`` (paired: both models
  answer the same queries over the same dev corpus);
- the *noise* is the standard error of that mean, ``std(per-query differences) / sqrt(queries)`` (what a
  bootstrap over dev queries estimates, without the sampling);
- a checkpoint *beats the base* when ``gain > threshold * standard_error`` and ``gain > 0``; the threshold
  (``TrainingConfig.min_improvement_standard_errors``, 2 by default) is set above 1 because the best of several
  checkpoints is chosen on the same queries, which flatters it.

Otherwise the base model is kept and the run's status is ``no_improvement``.

Example::

    evaluator = DevEvaluator(queries, corpus, relevant)
    base = evaluator.score(model, step=0)
    ...
    verdict = judge(base, evaluator.history, threshold=2.0)
    verdict.status                  # "improved" or "no_improvement"
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The metric that decides, and the ones reported next to it (all can move on a 1,000-document dev corpus;
#: recall@100 there is 1.0 for nearly every model, so it is not reported).
GUARD_METRIC = "ndcg@10"
REPORTED_METRICS = ("ndcg@10", "mrr@10", "recall@10")
IMPROVED = "improved"
NO_IMPROVEMENT = "no_improvement"
#: No dev slice, so nothing could be checked: the trained model is saved as it is.
NOT_CHECKED = "not_checked"


@dataclass
class DevScores:
    """Per-query dev metrics of one model (the base at step 0, or a checkpoint)."""

    step: int
    epoch: float | None
    #: metric name -> one value per dev query, in the evaluator's query order.
    per_query: dict[str, np.ndarray]

    def means(self) -> dict[str, float]:
        return {name: float(values.mean()) for name, values in self.per_query.items()}


def paired_gain(candidate: DevScores, base: DevScores, metric: str = GUARD_METRIC) -> tuple[float, float]:
    """``(mean per-query gain of candidate over base, standard error of that mean)`` for ``metric``."""
    differences = candidate.per_query[metric] - base.per_query[metric]
    if len(differences) < 2:
        return float(differences.mean()) if len(differences) else 0.0, 0.0
    return float(differences.mean()), float(differences.std(ddof=1) / math.sqrt(len(differences)))


@dataclass
class Verdict:
    """What the guard decided, with the figures behind it."""

    status: str
    #: The step of the checkpoint that is saved, or ``None`` when the base model is saved.
    chosen_step: int | None
    threshold_standard_errors: float
    base: dict[str, float]
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chosen(self) -> dict[str, float]:
        """Dev metrics of the saved model."""
        for row in self.checkpoints:
            if row["step"] == self.chosen_step:
                return {name: row[name] for name in self.base}
        return dict(self.base)

    def message(self) -> str:
        """One plain sentence for the output and the report."""
        if self.status == NOT_CHECKED:
            return "No dev slice, so the trained model could not be compared with the base model; it was saved as is."
        best = max(self.checkpoints, key=lambda row: row[GUARD_METRIC], default=None)
        if self.status == IMPROVED:
            row = next(row for row in self.checkpoints if row["step"] == self.chosen_step)
            return (
                f"Saved the checkpoint of step {row['step']}: dev {GUARD_METRIC} {self.base[GUARD_METRIC]:.4f} -> "
                f"{row[GUARD_METRIC]:.4f} (gain {row['gain']:+.4f}, {row['gain_in_standard_errors']:.1f} standard "
                f"errors; the guard asks for more than {self.threshold_standard_errors:g})."
            )
        if best is None:
            return "No checkpoint was evaluated, so the base model was kept."
        return (
            f"No improvement: no checkpoint beat the base model on the dev slice by more than "
            f"{self.threshold_standard_errors:g} standard errors (best: step {best['step']}, dev {GUARD_METRIC} "
            f"{self.base[GUARD_METRIC]:.4f} -> {best[GUARD_METRIC]:.4f}, gain {best['gain']:+.4f} ± "
            f"{best['standard_error']:.4f}). The output folder holds the base model, unchanged."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message(),
            "metric": GUARD_METRIC,
            "threshold_standard_errors": self.threshold_standard_errors,
            "chosen_step": self.chosen_step,
            "base": self.base,
            "checkpoints": self.checkpoints,
        }


def judge(base: DevScores, checkpoints: list[DevScores], *, threshold: float) -> Verdict:
    """The guard's decision: the best checkpoint by mean dev nDCG@10 if it beats ``base`` by more than
    ``threshold`` standard errors (and by more than nothing), else the base."""
    rows: list[dict[str, Any]] = []
    for scores in checkpoints:
        gain, error = paired_gain(scores, base)
        ratio = gain / error if error > 0 else (math.inf if gain > 0 else 0.0)
        rows.append(
            {
                "step": scores.step,
                "epoch": scores.epoch,
                **scores.means(),
                "gain": gain,
                "standard_error": error,
                "gain_in_standard_errors": ratio,
                "beats_base": bool(gain > 0 and gain > threshold * error),
            }
        )
    best = max(rows, key=lambda row: (row[GUARD_METRIC], -row["step"]), default=None)
    if best is not None and best["beats_base"]:
        return Verdict(IMPROVED, best["step"], threshold, base.means(), rows)
    return Verdict(NO_IMPROVEMENT, None, threshold, base.means(), rows)


def ranking_metrics(ranked: list[list[str]], relevant: list[set[str]]) -> dict[str, np.ndarray]:
    """Per-query nDCG@10 (binary gains), MRR@10 and recall@10 of ``ranked`` document ids (best first)."""
    discounts = 1.0 / np.log2(np.arange(2, 12))
    ndcg, mrr, recall = [], [], []
    for ranking, positives in zip(ranked, relevant):
        hits = np.array([doc in positives for doc in ranking[:10]], dtype=float)
        ideal = discounts[: min(len(positives), 10)].sum()
        ndcg.append(float((hits * discounts[: len(hits)]).sum() / ideal) if ideal else 0.0)
        first = np.flatnonzero(hits)
        mrr.append(1.0 / (first[0] + 1) if len(first) else 0.0)
        recall.append(hits.sum() / len(positives) if positives else 0.0)
    return {"ndcg@10": np.array(ndcg), "mrr@10": np.array(mrr), "recall@10": np.array(recall)}
