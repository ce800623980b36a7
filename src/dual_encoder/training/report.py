"""The picture of a training run: loss per step, and dev nDCG@10 / Recall@100 / MRR@10 per evaluation.

Example::

    plot_training_curves(json.loads(Path("model/training_report.json").read_text()), "curves.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_training_curves(report: dict[str, Any], path: str | Path) -> Path:
    """Save a PNG with the training loss (left) and the dev metrics (right) of ``report``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = report.get("history", {})
    figure, (loss_axis, dev_axis) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    losses = history.get("loss", [])
    loss_axis.plot([entry["step"] for entry in losses], [entry["loss"] for entry in losses], marker=".")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss")
    loss_axis.set_title(f"{report.get('architecture', '')}: training loss")
    loss_axis.grid(True, alpha=0.3)

    evaluations = list(history.get("dev", []))
    before = report.get("dev_before")
    if before:
        evaluations = [{"step": 0, **before}] + evaluations
    for metric in ("ndcg@10", "recall@100", "mrr@10"):
        points = [entry for entry in evaluations if metric in entry]
        dev_axis.plot([entry["step"] for entry in points], [entry[metric] for entry in points], marker="o", label=metric)
    dev_axis.set_xlabel("step")
    dev_axis.set_ylabel("dev score")
    dev_axis.set_ylim(0, 1)
    dev_axis.set_title("dev metrics (step 0 = before training)")
    dev_axis.legend(loc="lower right")
    dev_axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)
