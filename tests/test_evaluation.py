import json
import math

import pytest

from dual_encoder.errors import InvalidDocumentError
from dual_encoder.evaluation import evaluate_run, load_beir, plot_recall_curve


def test_metrics_on_hand_checked_rankings():
    qrels = {"q1": {"d1": 1}, "q2": {"d3": 1, "d4": 1}, "q3": {"d9": 1}}
    run = {
        "q1": {"d2": 0.9, "d1": 0.8},  # relevant at rank 2
        "q2": {"d3": 0.9, "d5": 0.8, "d4": 0.7},  # relevant at ranks 1 and 3
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

    corpus = [
        json.dumps({"_id": f"d{i}", "title": t, "text": x})
        for i, (t, x) in enumerate(
            [
                ("Tides", "The Moon's gravity causes ocean tides."),
                ("Bread", "Sourdough needs a starter of flour and water."),
                ("Stars", "Stars shine by nuclear fusion."),
            ]
        )
    ]
    queries = [
        json.dumps({"_id": "q0", "text": "what causes tides"}),
        json.dumps({"_id": "q1", "text": "how do stars shine"}),
    ]
    folder = (
        write_beir(tmp_path / "data", corpus, queries, "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td2\t1\n")
        if (tmp_path / "data").mkdir() is None
        else None
    )
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(folder),
            "--no-progress",
            "--output",
            str(tmp_path / "m.json"),
            "--plot",
            str(tmp_path / "r.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics["ndcg@10"] == pytest.approx(1.0) and metrics["mrr@10"] == pytest.approx(1.0)
    assert (tmp_path / "r.png").exists()


# ------------------------------------------------------------------------------------ retrieval methods
TERMS_CORPUS = [
    ("Zorblax buffer", "The zorblax buffer keeps enzyme samples stable during storage."),
    ("Freezing samples", "Biological samples stored at minus eighty degrees stay stable for years."),
    ("Enzyme kinetics", "Enzyme activity rises with temperature until the protein unfolds."),
    ("Qentrix lamps", "Qentrix lamps light greenhouses with a narrow red spectrum."),
    ("Greenhouse lighting", "Plants in greenhouses grow faster under extra light in winter."),
]
TERMS_QUERIES = {"q0": "zorblax for keeping samples", "q1": "qentrix greenhouse light"}


def terms_folder(tmp_path):
    corpus = [json.dumps({"_id": f"d{i}", "title": t, "text": x}) for i, (t, x) in enumerate(TERMS_CORPUS)]
    queries = [json.dumps({"_id": q, "text": text}) for q, text in TERMS_QUERIES.items()]
    (tmp_path / "terms").mkdir()
    return write_beir(tmp_path / "terms", corpus, queries, "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td3\t1\n")


def test_keyword_retrieval_ranks_the_exact_term_match_first(tmp_path, minilm):
    from dual_encoder.embedded import open_embedded_store
    from dual_encoder.evaluation import EVALUATION_DEPTH, evaluate_store

    folder = terms_folder(tmp_path)
    store = open_embedded_store(None)
    report = evaluate_store(folder, encoder=minilm, store=store, progress_bar=False, retrieval="bm25")
    assert report.retrieval == "keyword" and report.fusion is None and report.depth == EVALUATION_DEPTH
    # Each query's only exact-term document is ranked first.
    assert report.metrics["mrr@10"] == pytest.approx(1.0) and report.metrics["ndcg@10"] == pytest.approx(1.0)
    assert any("search: keyword" in note for note in report.notes)
    hybrid = evaluate_store(folder, encoder=minilm, store=store, progress_bar=False, retrieval="hybrid", weight=0.3)
    assert hybrid.retrieval == "hybrid" and hybrid.fusion == {"fusion": "weighted", "weight": 0.3, "candidates": 100}
    assert hybrid.depth == 100 and hybrid.metrics["mrr@10"] == pytest.approx(1.0)
    assert any("hybrid (weighted, weight 0.3" in note for note in hybrid.notes)


def test_hybrid_evaluation_equals_hybrid_search(tmp_path, minilm):
    from dual_encoder.embedded import open_embedded_store
    from dual_encoder.evaluation import evaluate_run, evaluate_store, load_beir
    from dual_encoder.hybrid import hybrid_search

    folder = terms_folder(tmp_path)
    store = open_embedded_store(None)
    report = evaluate_store(folder, encoder=minilm, store=store, progress_bar=False, retrieval="hybrid", fusion="rrf")
    data = load_beir(folder)
    # The top 10 of a plain top-10 hybrid search with the same options, scored alone, gives the same nDCG@10.
    run = {
        q: {h.record.id: h.score for h in hybrid_search(minilm, store, text, top_k=10, fusion="rrf").hits}
        for q, text in data.queries.items()
    }
    assert report.metrics["ndcg@10"] == pytest.approx(evaluate_run(data.qrels, run)["ndcg@10"], abs=1e-9)


def test_retrieval_options_are_checked_before_anything_is_encoded(tmp_path, minilm):
    from dual_encoder.embedded import EmbeddedStore
    from dual_encoder.errors import ConfigurationError
    from dual_encoder.evaluation import evaluate_store
    from dual_encoder.stores.contract import KeywordSearchUnsupportedError

    class VectorOnlyStore(EmbeddedStore):
        supports_keyword_search = False

    folder = terms_folder(tmp_path)
    store = VectorOnlyStore(None)
    with pytest.raises(KeywordSearchUnsupportedError, match="KeywordIndexedStore"):
        evaluate_store(folder, encoder=minilm, store=store, progress_bar=False, retrieval="hybrid")
    with pytest.raises(ConfigurationError, match="Unknown retrieval 'sparse'"):
        evaluate_store(folder, encoder=minilm, store=store, progress_bar=False, retrieval="sparse")
    with pytest.raises(ConfigurationError, match="hybrid retrieval only"):
        evaluate_store(folder, encoder=minilm, store=store, progress_bar=False, fusion="rrf")
    with pytest.raises(ConfigurationError, match="weight"):
        evaluate_store(folder, encoder=minilm, store=store, progress_bar=False, retrieval="hybrid", weight=2.0)
    assert store.count() == 0


def test_evaluate_command_retrieval_options(tmp_path):
    from typer.testing import CliRunner

    from dual_encoder.cli import app

    folder = terms_folder(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(folder),
            "--no-progress",
            "--retrieval",
            "hybrid",
            "--fusion",
            "rrf",
            "--weight",
            "0.5",
            "--candidates",
            "20",
            "--output",
            str(tmp_path / "h.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "hybrid (rrf, weight 0.5, 20 candidates) retrieval" in " ".join(result.output.split())
    report = json.loads((tmp_path / "h.json").read_text())
    assert report["retrieval"] == "hybrid" and report["fusion"] == {"fusion": "rrf", "weight": 0.5, "candidates": 20}
    assert report["depth"] == 20 and report["metrics"]["mrr@10"] == pytest.approx(1.0)
    result = runner.invoke(
        app, ["evaluate", str(folder), "--no-progress", "--retrieval", "keyword", "--output", str(tmp_path / "k.json")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "k.json").read_text())["retrieval"] == "keyword"
    result = runner.invoke(app, ["evaluate", str(folder), "--no-progress", "--retrieval", "sparse"])
    assert result.exit_code != 0 and "Unknown retrieval" in str(result.exception)
    result = runner.invoke(app, ["evaluate", str(folder), "--no-progress", "--weight", "0.5"])
    assert result.exit_code != 0 and "hybrid retrieval only" in str(result.exception)
