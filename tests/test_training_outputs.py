"""write_training_outputs: the one place every architecture writes its report, dual_encoder.json, model card
section and curves. Fast: no training, the saved "model" is all-MiniLM-L6-v2 itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

#: The keys every training report has, whatever the architecture.
SHARED_KEYS = {
    "status",
    "message",
    "config",
    "precision",
    "architecture",
    "frozen",
    "interrupted",
    "saved_model",
    "data",
    "dev_corpus",
    "steps",
    "epochs_completed",
    "dev_before",
    "dev_after",
    "guard",
    "history",
    "timings",
    "fingerprint",
    "base_fingerprint",
    "document_index_still_valid",
    "machine",
}


def _scores(step: int, ndcg: list[float]):
    from dual_encoder.training.guard import DevScores

    values = np.array(ndcg)
    return DevScores(step=step, epoch=float(step), per_query={"ndcg@10": values, "mrr@10": values, "recall@10": values})


def _write(tmp_path, minilm, **overrides):
    from dual_encoder.training import TrainingConfig
    from dual_encoder.training.report import write_training_outputs

    arguments = {
        "config": TrainingConfig(data=tmp_path / "data", output=tmp_path, architecture="siamese"),
        "verdict": None,
        "saved": minilm,
        "base_fingerprint": minilm.fingerprint,
        "precision": "fp32",
        "frozen": [],
        "interrupted": False,
        "saved_model": "trained",
        "saved_architecture": "siamese",
        "data": {"training_pairs": 3, "notes": ["a note"]},
        "dev_corpus": None,
        "steps": 5,
        "epochs_completed": 1.0,
        "history": {"loss": [{"step": 5, "epoch": 1.0, "loss": 0.5}], "dev": []},
        "timings": {"training_seconds": 1.5},
    }
    return write_training_outputs(tmp_path, **(arguments | overrides))


def test_the_report_on_disk_is_the_one_returned_with_every_shared_key(tmp_path, minilm):
    from dual_encoder.training.report import FINGERPRINT_FILE, PLOT_FILE, REPORT_FILE

    written = _write(tmp_path, minilm, details={"plan": {"steps": 5}})
    assert written.report_path == tmp_path / REPORT_FILE and written.plot_path == tmp_path / PLOT_FILE
    on_disk = json.loads(written.report_path.read_text(encoding="utf-8"))
    assert on_disk == written.report
    assert set(on_disk) == SHARED_KEYS | {"plan"}
    assert on_disk["plan"] == {"steps": 5}
    assert on_disk["status"] == "not_checked" and on_disk["guard"]["status"] == "not_checked"
    assert on_disk["dev_before"] is None and on_disk["document_index_still_valid"] is True
    assert on_disk["machine"]["cpu_count"] >= 1
    record = json.loads((tmp_path / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    assert record == {
        "fingerprint": minilm.fingerprint.to_dict(),
        "encoder": minilm.config.to_dict(),
        "trained_from": "all-MiniLM-L6-v2",
        "architecture": "siamese",
        "training_status": "not_checked",
        "document_index_still_valid_for_base_model": True,
    }
    assert written.plot_path.stat().st_size > 0


def test_the_guards_verdict_decides_the_status_and_the_card_keeps_what_was_there(tmp_path, minilm):
    from dual_encoder.training.guard import judge

    (tmp_path / "README.md").write_text("# The card sentence-transformers wrote\n", encoding="utf-8")
    verdict = judge(_scores(0, [0.5, 0.4, 0.6, 0.5]), [_scores(5, [0.5, 0.41, 0.6, 0.49])], threshold=2.0)
    assert verdict.status == "no_improvement"
    written = _write(
        tmp_path,
        minilm,
        verdict=verdict,
        saved_model="base",
        saved_architecture="base model (training did not improve it)",
        message="Kept the start.",
    )
    assert written.report["status"] == "no_improvement"
    assert written.report["message"] == "Kept the start." == written.report["guard"]["message"]
    assert written.report["dev_before"] == pytest.approx({"ndcg@10": 0.5, "mrr@10": 0.5, "recall@10": 0.5})
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert card.startswith("# The card sentence-transformers wrote\n")
    assert "**Status: `no_improvement`.** Kept the start." in card
    record = json.loads((tmp_path / "dual_encoder.json").read_text(encoding="utf-8"))
    assert record["architecture"] == "base model (training did not improve it)"
    assert record["training_status"] == "no_improvement"


def test_another_document_space_says_the_index_is_no_longer_valid(tmp_path, minilm):
    from dataclasses import replace

    other = replace(minilm.fingerprint, document_space="ds1-000000000000000000000000")
    written = _write(tmp_path, minilm, base_fingerprint=other)
    assert written.report["document_index_still_valid"] is False
    record = json.loads((tmp_path / "dual_encoder.json").read_text(encoding="utf-8"))
    assert record["document_index_still_valid_for_base_model"] is False
