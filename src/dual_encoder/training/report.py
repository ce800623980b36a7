"""The picture and the card of a training run: loss per step, dev nDCG@10 / MRR@10 / Recall@10 per evaluation,
and the guard's before/after table for the model card.

Example::

    report = json.loads(Path("model/training_report.json").read_text())
    plot_training_curves(report, "curves.png")
    print(guard_card_section(report))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dual_encoder.training.guard import REPORTED_METRICS

_METRIC_TITLES = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "recall@10": "Recall@10"}


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
    for metric in REPORTED_METRICS:
        points = [entry for entry in evaluations if metric in entry]
        dev_axis.plot(
            [entry["step"] for entry in points],
            [entry[metric] for entry in points],
            marker="o",
            label=_METRIC_TITLES.get(metric, metric),
        )
    dev_axis.set_xlabel("step")
    dev_axis.set_ylabel("dev score")
    dev_axis.set_ylim(0, 1)
    dev_axis.set_title(f"dev metrics (step 0 = base model); saved: {report.get('saved_model', 'trained')}")
    dev_axis.legend(loc="lower right")
    dev_axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def guard_card_section(report: dict[str, Any]) -> str:
    """Markdown for the model card: the guard's verdict and the dev figures of the base and every checkpoint."""
    guard = report.get("guard") or {}
    lines = ["", "", "## Training result (dual-encoder)", ""]
    lines += [f"**Status: `{report['status']}`.** {report['message']}", ""]
    corpus = report.get("dev_corpus")
    if corpus:
        lines += [
            f"Dev slice: {corpus['dev_queries']:,} queries held out of the training data, searched over "
            f"{corpus['description']}.",
            "",
        ]
    rows = guard.get("checkpoints") or []
    base = guard.get("base")
    if base:
        titles = [_METRIC_TITLES.get(metric, metric) for metric in REPORTED_METRICS]
        lines += [
            "| model | step | " + " | ".join(titles) + " | gain in nDCG@10 | standard error | beats base |",
            "|---|---:|" + "---:|" * len(titles) + "---:|---:|---|",
            "| base | 0 | " + " | ".join(f"{base[m]:.4f}" for m in REPORTED_METRICS) + " | | | |",
        ]
        for row in rows:
            chosen = " (saved)" if row["step"] == guard.get("chosen_step") else ""
            lines.append(
                f"| checkpoint{chosen} | {row['step']} | "
                + " | ".join(f"{row[m]:.4f}" for m in REPORTED_METRICS)
                + f" | {row['gain']:+.4f} | {row['standard_error']:.4f} | {'yes' if row['beats_base'] else 'no'} |"
            )
        lines += [
            "",
            f"A checkpoint beats the base when its mean nDCG@10 gain over the dev queries exceeds "
            f"{guard['threshold_standard_errors']:g} standard errors of that gain (paired, per query).",
        ]
    return "\n".join(lines) + "\n"
