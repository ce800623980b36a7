"""Fitting the hybrid fusion weight to an encoder: the chooser, the record in the model folder, training and
``tune-fusion`` writing it, and every hybrid consumer reading it (an explicit weight still wins)."""

from __future__ import annotations

import json
import logging
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from dual_encoder.errors import ConfigurationError
from dual_encoder.fusion_tuning import (
    FUSION_FILE,
    FusionChoice,
    FusionRecordError,
    choose_fusion_weight,
    read_fusion_choice,
    resolve_fusion,
    write_fusion_choice,
)
from dual_encoder.hybrid import DEFAULT_FUSION, DEFAULT_WEIGHT


# ------------------------------------------------------------------------------------- a controlled dense side
class TableEncoder:
    """A dense side whose query-document similarities are exactly the table given: query ``i`` encodes to the
    ``i``-th unit vector and each document to its column of similarities (dot product)."""

    similarity = "dot"

    def __init__(self, queries: list[str], similarities: dict[str, list[float]]) -> None:
        self.queries = queries
        self.similarities = similarities

    def encode_queries(self, texts, *, progress_bar=None) -> np.ndarray:
        return np.eye(len(self.queries), dtype=np.float32)[[self.queries.index(text) for text in texts]]

    def encode_documents(self, texts, *, progress_bar=None) -> np.ndarray:
        return np.array([self.similarities[text] for text in texts], dtype=np.float32)


def _controlled_slice(relevant_dense_rank: int, relevant_in_keyword: bool):
    """Four queries, each with its own words. Per query: two documents dense ranks first and BM25 never finds
    (no query word), two BM25 ranks first and dense ranks low, two weak keyword matches, and the relevant one:
    dense rank ``relevant_dense_rank`` and, with ``relevant_in_keyword``, BM25 rank 3 (else no query word)."""
    queries, corpus, qrels, columns = {}, {}, {}, {}
    count = 4
    for i in range(count):
        a, b = f"w{i}alpha", f"w{i}beta"
        queries[f"q{i}"] = f"{a} {b}"
        dense_top = [f"unrelated{i}x lorem", f"unrelated{i}y ipsum"]
        keyword_top = [f"{a} {b} {a} {b}", f"{a} {b} {a}"]
        weak = [
            f"{a} " + " ".join(f"pad{i}n{j}" for j in range(12)),
            f"{b} " + " ".join(f"fill{i}n{j}" for j in range(12)),
        ]
        relevant = f"{a} {b} tail{i}one tail{i}two" if relevant_in_keyword else f"synonym{i} phrasing only"
        dense = {relevant: 0.0, keyword_top[0]: 0.1, keyword_top[1]: 0.1, weak[0]: 0.05, weak[1]: 0.05}
        ranked = [dense_top[0], dense_top[1]]
        ranked.insert(relevant_dense_rank - 1, relevant)
        for position, text in enumerate(ranked):
            dense[text] = 1.0 - 0.05 * position
        for number, text in enumerate([*dense_top, *keyword_top, *weak, relevant]):
            document_id = f"d{i}-{number}"
            corpus[document_id] = text
            column = [0.0] * count
            column[i] = dense[text]
            columns[text] = column
            if text == relevant:
                qrels[f"q{i}"] = {document_id: 1}
    return TableEncoder(list(queries.values()), columns), queries, corpus, qrels


def test_chooser_records_dense_only_when_bm25_never_finds_the_relevant_document():
    encoder, queries, corpus, qrels = _controlled_slice(relevant_dense_rank=1, relevant_in_keyword=False)
    choice = choose_fusion_weight(encoder, queries, corpus, qrels, progress_bar=False)  # type: ignore[arg-type]
    assert choice.dev["dense"] == pytest.approx(1.0) and choice.dev["keyword"] == pytest.approx(0.0)
    assert choice.fell_back_to == "dense" and choice.stronger_input == "dense"
    assert (choice.fusion, choice.weight) == (DEFAULT_FUSION, 1.0)
    assert choice.dev["gain"] <= 0
    # Every weighted mix below dense-only puts a keyword match above the relevant document for some query.
    assert all(value < 1.0 for weight, value in choice.curve["weighted"].items() if float(weight) < 0.5)
    assert "no fusion beat dense alone" in choice.message()
    assert choice.dev_queries == 4 and choice.dev_documents == len(corpus) and set(choice.curve) == {"weighted", "rrf"}


def test_chooser_mixes_when_each_side_finds_the_relevant_document_third():
    encoder, queries, corpus, qrels = _controlled_slice(relevant_dense_rank=3, relevant_in_keyword=True)
    choice = choose_fusion_weight(encoder, queries, corpus, qrels, progress_bar=False)  # type: ignore[arg-type]
    assert choice.dev["dense"] == pytest.approx(0.5) and choice.dev["keyword"] == pytest.approx(0.5)
    assert choice.fell_back_to is None
    assert 0.0 < choice.weight < 1.0
    assert choice.dev["fused"] == pytest.approx(1.0) and choice.dev["gain"] == pytest.approx(0.5)
    assert choice.curve[choice.fusion][f"{choice.weight:g}"] == choice.dev["fused"]
    assert choice.curve["weighted"]["1"] == pytest.approx(0.5)  # weight 1 is dense alone
    assert f"{choice.fusion} with weight {choice.weight:g}" in choice.message()


def test_chooser_refuses_a_dev_slice_it_cannot_score():
    encoder, queries, corpus, _ = _controlled_slice(relevant_dense_rank=1, relevant_in_keyword=True)
    with pytest.raises(ConfigurationError, match="relevant document"):
        choose_fusion_weight(encoder, queries, corpus, {}, progress_bar=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="candidates"):
        choose_fusion_weight(encoder, queries, corpus, {"q0": {"d0-0": 1}}, candidates=3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ the record
def _choice(fusion: str = "rrf", weight: float = 0.85) -> FusionChoice:
    return FusionChoice(
        fusion=fusion,  # type: ignore[arg-type]
        weight=weight,
        dev={"dense": 0.8, "keyword": 0.7, "fused": 0.83, "gain": 0.03, "standard_error": 0.01},
        dev_queries=81,
        dev_documents=1200,
        candidates=100,
        curve={"weighted": {"0": 0.7, "1": 0.8}},
        source={"by": "test"},
    )


def test_record_round_trips_atomically_and_resolves_from_the_model(tmp_path):
    path = write_fusion_choice(tmp_path, _choice())
    assert path == tmp_path / FUSION_FILE and not list(tmp_path.glob("*.tmp"))
    assert read_fusion_choice(str(tmp_path)) == _choice()
    assert json.loads(path.read_text())["weight"] == 0.85
    setting = resolve_fusion(str(tmp_path), None, None)
    assert (setting.fusion, setting.weight, setting.source) == ("rrf", 0.85, "model")
    write_fusion_choice(tmp_path, _choice("weighted", 0.6))  # a newer record replaces the cached one
    assert resolve_fusion(str(tmp_path), None, None).weight == 0.6


def test_explicit_weight_wins_and_models_without_a_record_use_the_default(tmp_path):
    write_fusion_choice(tmp_path, _choice("weighted", 0.85))
    given = resolve_fusion(str(tmp_path), None, 0.3)
    assert (given.fusion, given.weight, given.source) == (DEFAULT_FUSION, 0.3, "given")
    # A different method than the recorded one: the recorded weight belongs to the other method.
    other = resolve_fusion(str(tmp_path), "rrf", None)
    assert (other.fusion, other.weight, other.source) == ("rrf", DEFAULT_WEIGHT, "default")
    named = resolve_fusion("all-MiniLM-L6-v2", None, None)
    assert (named.fusion, named.weight, named.source) == (DEFAULT_FUSION, DEFAULT_WEIGHT, "default")
    with pytest.raises(ConfigurationError, match="weight"):
        resolve_fusion(str(tmp_path), None, 1.5)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "Expecting property name"),
        (
            '{"format": 1, "fusion": "weighted", "weight": 1.5, "candidates": 100, "dev": {}, "dev_queries": 1, '
            '"dev_documents": 1}',
            "from 0 (keyword only) to 1",
        ),
        ('{"format": 1, "fusion": "max", "weight": 0.5}', "missing field"),
        ("[1, 2]", "JSON list"),
        ('{"format": 7}', "format 1"),
    ],
)
def test_a_damaged_record_is_refused_naming_the_file_and_the_fix(tmp_path, content, problem):
    (tmp_path / FUSION_FILE).write_text(content)
    with pytest.raises(FusionRecordError) as raised:
        resolve_fusion(str(tmp_path), None, None)
    message = str(raised.value)
    assert str(tmp_path / FUSION_FILE) in message and problem in message
    assert "dual-encoder tune-fusion --model" in message and "delete it" in message
    assert resolve_fusion(str(tmp_path), None, 0.5).weight == 0.5  # an explicit weight never reads the record


# ------------------------------------------------------------------------------ training and tune-fusion
def _sample_rows() -> list[dict]:
    text = resources.files("dual_encoder.sample_data").joinpath("corpus.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def title_pairs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fusion") / "pairs.jsonl"
    rows = _sample_rows()
    path.write_text("".join(json.dumps({"query": r["meta"]["title"], "positive": r["content"]}) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, title_pairs):
    """A two-step training run with a dev slice (as tests/test_training.py's quick runs), and what it said."""
    from dual_encoder.training import TrainingConfig, train

    said: list[str] = []
    output = tmp_path_factory.mktemp("fusion-model") / "model"
    config = TrainingConfig(
        data=title_pairs,
        output=output,
        epochs=1,
        max_steps=2,
        batch_size=8,
        learning_rate=2e-4,
        hard_negatives=1,
        negative_rank_range=(1, 5),
        dev_fraction=0.2,
        max_seq_length=64,
        progress_bar=False,
        precision="fp32",
    )
    result = train(config, announce=said.append)
    return result, said


def test_training_records_the_fusion_for_the_saved_model_and_keeps_the_fingerprint(trained):
    from dual_encoder.encoder import DualEncoder

    result, said = trained
    record = json.loads((result.model_path / FUSION_FILE).read_text())
    choice = read_fusion_choice(str(result.model_path))
    assert choice is not None and record == result.report["hybrid_fusion"]
    assert choice.dev_queries == result.report["data"]["dev_queries"] == 6
    assert choice.dev_documents == result.report["data"]["documents"]  # 30 documents: the whole corpus
    assert choice.source["by"] == "dual-encoder train" and choice.source["seed"] == 42
    assert (choice.fell_back_to is None) == (choice.dev["fused"] > max(choice.dev["dense"], choice.dev["keyword"]))
    if choice.fell_back_to == "dense":
        assert choice.weight == 1.0
    assert any(line.startswith("Hybrid fusion:") and f"{choice.weight:g}" in line for line in said)
    assert result.report["timings"]["fusion_tuning_seconds"] > 0
    # The fusion is not part of the embedding space: the recorded fingerprint is the model's own.
    stored = json.loads((result.model_path / "dual_encoder.json").read_text())
    assert (
        choice.source["fingerprint"]
        == stored["fingerprint"]
        == DualEncoder(str(result.model_path)).fingerprint.to_dict()
    )


def test_tune_fusion_command_holds_out_the_same_dev_slice_as_training(trained, title_pairs, tmp_path):
    from typer.testing import CliRunner

    from dual_encoder.cli import app

    result, _ = trained
    model = tmp_path / "copy"
    shutil.copytree(result.model_path, model, ignore=shutil.ignore_patterns("checkpoints"))
    (model / FUSION_FILE).unlink()
    outcome = CliRunner().invoke(
        app,
        ["tune-fusion", "--model", str(model), "--data", str(title_pairs), "--dev-fraction", "0.2", "--no-progress"],
    )
    assert outcome.exit_code == 0, outcome.output
    text = " ".join(outcome.output.split())
    tuned, from_training = read_fusion_choice(str(model)), read_fusion_choice(str(result.model_path))
    assert tuned is not None and from_training is not None
    assert tuned.source["by"] == "dual-encoder tune-fusion"
    # Same slice, same corpus (the whole of it here), same model: the same figures and the same choice.
    assert (tuned.fusion, tuned.weight, tuned.dev_queries) == (from_training.fusion, from_training.weight, 6)
    assert tuned.dev == pytest.approx(from_training.dev, abs=1e-6)
    # Rich wraps long paths anywhere, so compare without whitespace.
    assert f"Recordedin{model / FUSION_FILE}" in "".join(text.split()) and "dev nDCG@10 by fusion weight" in text

    unchanged = (model / FUSION_FILE).read_text()
    outcome = CliRunner().invoke(
        app, ["tune-fusion", "--model", str(model), "--data", str(title_pairs), "--dev-fraction", "0", "--no-write"]
    )
    assert outcome.exit_code != 0 and "--dev-fraction" in outcome.output
    assert (model / FUSION_FILE).read_text() == unchanged


# ------------------------------------------------------------------------------------------------ consumers
@pytest.fixture(scope="module")
def recorded_model(trained, tmp_path_factory) -> Path:
    """A copy of the trained model whose record says rrf at 0.85: a setting no default or test elsewhere uses."""
    result, _ = trained
    model = tmp_path_factory.mktemp("recorded") / "model"
    shutil.copytree(result.model_path, model, ignore=shutil.ignore_patterns("checkpoints"))
    write_fusion_choice(model, _choice("rrf", 0.85))
    return model


PASSAGES = [
    "Cats purr when they are content and sometimes when they are stressed.",
    "Dogs bark at strangers, at the postman and at other dogs.",
    "Heat pumps move heat from outside air into a house.",
    "A heat wave is a long stretch of unusually hot weather.",
    "The barking of a dog can be trained away with patience.",
    "Solar panels turn sunlight into electricity.",
]


def _ids_and_scores(documents) -> list[tuple[str, float]]:
    return [(document.id, round(float(document.score), 6)) for document in documents]


def test_haystack_hybrid_retriever_uses_the_recorded_weight_unless_given_one(recorded_model, caplog):
    from haystack_integrations.components.retrievers.dual_encoder import DualEncoderHybridRetriever
    from haystack_integrations.document_stores.dual_encoder.document_store import EmbeddedDocumentStore

    from dual_encoder.documents import DocumentInput
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.hybrid import hybrid_search
    from dual_encoder.search import index_documents

    encoder = DualEncoder(str(recorded_model))
    document_store = EmbeddedDocumentStore()
    index_documents(
        encoder, document_store.store, [DocumentInput(id=f"p{i}", content=t) for i, t in enumerate(PASSAGES)]
    )
    retriever = DualEncoderHybridRetriever(document_store=document_store, encoder=str(recorded_model), top_k=4)
    assert (retriever.fusion_setting.fusion, retriever.fusion_setting.weight) == ("rrf", 0.85)
    assert retriever.fusion_setting.source == "model"
    with caplog.at_level(logging.INFO, logger="dual_encoder.fusion_tuning"):
        documents = retriever.run(query="barking dogs and heat")["documents"]
    expected = hybrid_search(encoder, document_store.store, "barking dogs and heat", top_k=4, fusion="rrf", weight=0.85)
    assert [d.id for d in documents] == [hit.record.id for hit in expected.hits]
    assert [d.score for d in documents] == pytest.approx([hit.score for hit in expected.hits])
    data = retriever.to_dict()
    assert data["init_parameters"]["weight"] is None and data["init_parameters"]["fusion"] is None
    assert DualEncoderHybridRetriever.from_dict(data).fusion_setting.source == "model"

    explicit = DualEncoderHybridRetriever(
        document_store=document_store, encoder=str(recorded_model), top_k=4, weight=0.2
    )
    assert (explicit.fusion_setting.fusion, explicit.fusion_setting.weight) == (DEFAULT_FUSION, 0.2)
    given = hybrid_search(
        encoder, document_store.store, "barking dogs and heat", top_k=4, fusion=DEFAULT_FUSION, weight=0.2
    )
    assert [d.id for d in explicit.run(query="barking dogs and heat")["documents"]] == [h.record.id for h in given.hits]
    assert explicit.to_dict()["init_parameters"]["weight"] == 0.2


def test_langchain_auto_alpha_uses_the_recorded_weight_and_a_number_wins(recorded_model):
    from langchain_dual_encoder import DualEncoderEmbeddings, DualEncoderVectorStore

    vectorstore = DualEncoderVectorStore.embedded(DualEncoderEmbeddings(str(recorded_model)))
    vectorstore.add_texts(PASSAGES, ids=[f"p{i}" for i in range(len(PASSAGES))])
    query = "barking dogs and heat"
    auto = vectorstore.similarity_search_with_score(query, k=4, hybrid_alpha="auto")
    recorded = vectorstore.similarity_search_with_score(query, k=4, hybrid_alpha=0.85, hybrid_fusion="rrf")
    explicit = vectorstore.similarity_search_with_score(query, k=4, hybrid_alpha=0.2)
    default = vectorstore.similarity_search_with_score(query, k=4, hybrid_alpha=0.2, hybrid_fusion=DEFAULT_FUSION)
    assert [(d.id, s) for d, s in auto] == [(d.id, s) for d, s in recorded]
    assert [(d.id, s) for d, s in explicit] == [(d.id, s) for d, s in default]
    assert [s for _, s in auto] != [s for _, s in explicit]
    with pytest.raises(ConfigurationError, match="'auto'"):
        vectorstore.similarity_search_with_score(query, k=4, hybrid_alpha="max")  # type: ignore[arg-type]


def test_evaluate_hybrid_uses_the_recorded_weight_and_says_so(recorded_model, tmp_path):
    from dual_encoder.embedded import open_embedded_store
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.evaluation import evaluate_store

    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": f"p{i}", "title": "", "text": t}) for i, t in enumerate(PASSAGES))
    )
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "Why do dogs bark?"}))
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp1\t1\n")
    encoder = DualEncoder(str(recorded_model))
    store = open_embedded_store(None)
    report = evaluate_store(tmp_path, encoder=encoder, store=store, progress_bar=False, retrieval="hybrid")
    assert report.fusion == {"fusion": "rrf", "weight": 0.85, "candidates": 100}
    assert any(
        note == f"fusion: rrf fusion, weight 0.85 (recorded in {recorded_model / FUSION_FILE})" for note in report.notes
    )
    given = evaluate_store(tmp_path, encoder=encoder, store=store, progress_bar=False, retrieval="hybrid", weight=0.3)
    assert given.fusion == {"fusion": DEFAULT_FUSION, "weight": 0.3, "candidates": 100}
    assert any(note.endswith("weight 0.3 (as given)") for note in given.notes)
