"""What a training run leaves next to its model: the report, the fingerprint file, the model card section and
the picture (loss per step, dev nDCG@10 / MRR@10 / Recall@10 per evaluation, the guard's before/after table).

Every architecture writes them through :func:`write_training_outputs`, so their reports share one set of keys.

Example::

    report = json.loads(Path("model/training_report.json").read_text())
    plot_training_curves(report, "curves.png")
    print(guard_card_section(report))
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dual_encoder.training.guard import NOT_CHECKED, REPORTED_METRICS, Verdict

if TYPE_CHECKING:
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.fingerprint import EncoderFingerprint
    from dual_encoder.training.config import TrainingConfig

#: The encoder fingerprint of the saved model and how it was trained.
FINGERPRINT_FILE = "dual_encoder.json"
#: The whole run: configuration, data, plan, loss and dev history, the guard's verdict, timings, the machine.
REPORT_FILE = "training_report.json"
PLOT_FILE = "training_curves.png"
MODEL_CARD_FILE = "README.md"

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


@dataclass(frozen=True)
class TrainingOutputs:
    """What :func:`write_training_outputs` wrote: the report (also as a dict) and the plot."""

    report: dict[str, Any]
    report_path: Path
    plot_path: Path


def write_training_outputs(
    output: Path,
    *,
    config: TrainingConfig,
    verdict: Verdict | None,
    saved: DualEncoder,
    base_fingerprint: EncoderFingerprint,
    precision: str,
    frozen: list[str],
    interrupted: bool,
    saved_model: str,
    saved_architecture: str,
    data: dict[str, Any],
    dev_corpus: dict[str, Any] | None,
    steps: int,
    epochs_completed: float | None,
    history: dict[str, list[dict[str, Any]]],
    timings: dict[str, float],
    details: dict[str, Any] | None = None,
    message: str | None = None,
) -> TrainingOutputs:
    """Write the report, ``dual_encoder.json``, the guard's section of the model card and the curves of a finished
    training run into ``output`` (the saved model's folder).

    :param verdict: The guard's decision (``None``: there was no dev slice, status ``not_checked``).
    :param saved: An encoder over the saved model folder, with the run's encoder settings; its fingerprint and
        definition are recorded.
    :param base_fingerprint: The base model's fingerprint: the saved model's documents keep the base model's index
        valid exactly when the two document spaces are equal.
    :param saved_model: What was saved, in words (``"trained"``, ``"base"``, ...).
    :param saved_architecture: The architecture ``dual_encoder.json`` records for the saved model.
    :param data: Counts of the training data (pairs, queries, documents, dev queries, ...) and its ``notes``.
    :param history: ``loss`` and ``dev`` entries per step.
    :param details: Keys only this architecture reports (a plan, query latency, ...), added to the report.
    :param message: Replaces the guard's message (when the saved model is not the base model but a start of its own).
    :returns: The report as written, its path and the plot's path.
    """
    guard: dict[str, Any] = (
        verdict.to_dict()
        if verdict is not None
        else {
            "status": NOT_CHECKED,
            "message": Verdict(NOT_CHECKED, None, config.min_improvement_standard_errors, {}).message(),
        }
    )
    if message is not None:
        guard["message"] = message
    fingerprint = saved.fingerprint
    index_still_valid = fingerprint.document_space == base_fingerprint.document_space
    report: dict[str, Any] = {
        "status": guard["status"],
        "message": guard["message"],
        "config": config.to_dict(),
        "precision": precision,
        "architecture": config.architecture,
        "frozen": frozen,
        "interrupted": interrupted,
        "saved_model": saved_model,
        "data": data,
        "dev_corpus": dev_corpus,
        "steps": steps,
        "epochs_completed": epochs_completed,
        "dev_before": verdict.base if verdict is not None else None,
        "dev_after": verdict.chosen if verdict is not None else None,
        "guard": guard,
        "history": history,
        "timings": timings,
        **(details or {}),
        "fingerprint": fingerprint.to_dict(),
        "base_fingerprint": base_fingerprint.to_dict(),
        "document_index_still_valid": index_still_valid,
        "machine": machine_facts(),
    }
    report_path = output / REPORT_FILE
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    fingerprint_record = {
        "fingerprint": fingerprint.to_dict(),
        "encoder": saved.config.to_dict(),
        "trained_from": config.base_model,
        "architecture": saved_architecture,
        "training_status": guard["status"],
        "document_index_still_valid_for_base_model": index_still_valid,
    }
    (output / FINGERPRINT_FILE).write_text(json.dumps(fingerprint_record, indent=2) + "\n", encoding="utf-8")
    card = output / MODEL_CARD_FILE
    card.write_text(
        (card.read_text(encoding="utf-8") if card.exists() else "") + guard_card_section(report), encoding="utf-8"
    )
    plot_path = plot_training_curves(report, output / PLOT_FILE)
    return TrainingOutputs(report=report, report_path=report_path, plot_path=plot_path)


def machine_facts() -> dict[str, Any]:
    """The machine a run ran on: platform, processor, CPU count, torch's threads, Python."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
