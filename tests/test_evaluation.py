import json
import math

import pytest

from dual_encoder.errors import InvalidDocumentError
from dual_encoder.evaluation import evaluate_run, load_beir, plot_recall_curve


def test_metrics_on_hand_checked_rankings():
    qrels = {"q1": {"d1": 1}, "q2": {"d3": 1, "d4": 1}, "q3": {"d9": 1}}
    run = {
        "q1": {"d2": 0.9, "d1": 0.8},              # relevant at rank 2
        "q2": {"d3": 0.9, "d5": 0.8, "d4": 0.7},   # relevant at ranks 1 and 3
        # q3 not retrieved at all: counts as 0
    }
    metrics = evaluate_run(qrels, run)
    ndcg_q1 = 1 / math.log2(3)
    ndcg_q2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert metrics["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 3, abs=1e-4)
    assert metrics["mrr@10"] == pytest.approx((0.5 + 1.0) / 3, abs=1e-4)
    assert metrics["recall@1"] == pytest.approx((0 + 0.5) / 3, abs=1e-4)
    assert metrics["recall@10"] == pytest.approx(2 / 3, abs=1e-4)
    assert metrics["map@100"] == pytest.approx((0.5 + (1 + 2 / 3) / 2) / 3, abs=1e-4)


def test_mrr_only_counts_hits_within_ten():
    run = {"q": {f"x{i}": 1 - i / 100 for i in range(10)} | {"hit": 0.0}}
    assert evaluate_run({"q": {"hit": 1}}, run)["mrr@10"] == 0.0


def write_beir(tmp_path, corpus_lines, query_lines, qrels_text):
    (tmp_path / "qrels").mkdir(exist_ok=True)
    (tmp_path / "corpus.jsonl").write_text("\n".join(corpus_lines))
    (tmp_path / "queries.jsonl").write_text("\n".join(query_lines))
    (tmp_path / "qrels" / "test.tsv").write_text(qrels_text)
    return tmp_path


CORPUS = [json.dumps({"_id": "d1", "title": "T", "text": "body one"}), json.dumps({"_id": "d2", "text": "body two"})]
QUERIES = [json.dumps({"_id": "q1", "text": "question"})]


def test_loads_and_reports_unknown_documents(tmp_path):
    data = load_beir(write_beir(tmp_path, CORPUS, QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnope\t1\n"))
    assert data.corpus["d1"].beir_text == "T body one" and data.corpus["d2"].beir_text == "body two"
    assert data.unknown_document_judgements == 1 and "1 judgement(s)" in data.notes[0]


def test_malformed_line_is_reported_with_its_number(tmp_path):
    folder = write_beir(tmp_path, [CORPUS[0], "{broken"], QUERIES, "q1\td1\t1\n")
    with pytest.raises(InvalidDocumentError, match=r"corpus.jsonl:2 is not valid JSON"):
        load_beir(folder)
    folder = write_beir(tmp_path, CORPUS, QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(InvalidDocumentError, match=r"test.tsv:2 must be"):
        load_beir(folder)


def test_missing_file_and_empty_split(tmp_path):
    with pytest.raises(InvalidDocumentError, match="corpus.jsonl' is missing"):
        load_beir(tmp_path)
    with pytest.raises(InvalidDocumentError, match="split is empty"):
        load_beir(write_beir(tmp_path, CORPUS, QUERIES, "query-id\tcorpus-id\tscore\n"))


def test_unknown_queries_are_counted_and_left_out(tmp_path):
    data = load_beir(write_beir(tmp_path, CORPUS, QUERIES, "q1\td1\t1\nq404\td2\t1\n"))
    assert list(data.qrels) == ["q1"] and "1 judged query id(s)" in data.notes[0]


def test_recall_plot_is_written(tmp_path):
    path = plot_recall_curve({"recall@1": 0.2, "recall@10": 0.7, "recall@100": 0.9}, tmp_path / "r.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_command_on_a_tiny_dataset(tmp_path):
    from typer.testing import CliRunner

    from dual_encoder.cli import app

    corpus = [json.dumps({"_id": f"d{i}", "title": t, "text": x}) for i, (t, x) in enumerate([
        ("Tides", "The Moon's gravity causes ocean tides."),
        ("Bread", "Sourdough needs a starter of flour and water."),
        ("Stars", "Stars shine by nuclear fusion."),
    ])]
    queries = [json.dumps({"_id": "q0", "text": "what causes tides"}), json.dumps({"_id": "q1", "text": "how do stars shine"})]
    folder = write_beir(tmp_path / "data", corpus, queries, "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td2\t1\n") if (tmp_path / "data").mkdir() is None else None
    result = CliRunner().invoke(app, ["evaluate", str(folder), "--no-progress", "--output", str(tmp_path / "m.json"),
                                      "--plot", str(tmp_path / "r.png")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics["ndcg@10"] == pytest.approx(1.0) and metrics["mrr@10"] == pytest.approx(1.0)
    assert (tmp_path / "r.png").exists()
