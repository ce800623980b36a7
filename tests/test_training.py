"""Training: configuration and data checks, and a few real steps of every architecture on tiny data."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import ConfigurationError
from dual_encoder.training import TrainingConfig, TrainingDataError, load_training_data, train
from dual_encoder.training.architectures import build_training_model
from dual_encoder.training.data import split_off_dev
from dual_encoder.training.hard_negatives import pick_negatives


def _sample_rows() -> list[dict]:
    text = resources.files("dual_encoder.sample_data").joinpath("corpus.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def title_pairs(tmp_path_factory) -> Path:
    """30 (title, passage) pairs: a small task the base model does not already solve perfectly."""
    path = tmp_path_factory.mktemp("training") / "pairs.jsonl"
    path.write_text(
        "".join(json.dumps({"query": row["meta"]["title"], "positive": row["content"]}) + "\n" for row in _sample_rows()),
        encoding="utf-8",
    )
    return path


def _write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _config(data, output, **overrides) -> TrainingConfig:
    options = dict(
        data=data, output=output, epochs=1, max_steps=4, batch_size=8, mini_batch_size=4, learning_rate=2e-4,
        hard_negatives=1, negative_rank_range=(1, 5), dev_fraction=0.0, max_seq_length=64, progress_bar=False,
    )
    options.update(overrides)
    return TrainingConfig(**options)


def _ranking_loss(encoder: DualEncoder, pairs: Path) -> float:
    """In-batch softmax loss (scale 20) of every query against all passages: what MNRL minimises."""
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    queries = encoder.encode_queries([row["query"] for row in rows])
    documents = encoder.encode_documents([row["positive"] for row in rows])
    scores = torch.from_numpy(20.0 * queries @ documents.T)
    return float(torch.nn.functional.cross_entropy(scores, torch.arange(len(rows))))


# ------------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"architecture": "triple-tower"}, "architecture must be one of"),
        ({"loss": "contrastive"}, "loss must be one of"),
        ({"negative_rank_range": (20, 10)}, "negative_rank_range"),
        ({"hard_negatives": 5, "negative_rank_range": (0, 3)}, "fewer than the 5 hard negatives"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"architecture": "siamese", "query_model": "all-MiniLM-L6-v2"}, "query_model"),
        ({"architecture": "light-query", "loss": "triplet"}, "light-query"),
    ],
)
def test_impossible_settings_are_refused_before_anything_loads(tmp_path, overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        TrainingConfig(data=tmp_path, output=tmp_path / "out", **overrides)


def test_unknown_option_in_dict_form_is_named():
    with pytest.raises(ConfigurationError, match="epocs"):
        TrainingConfig.from_dict({"data": "x", "output": "y", "epocs": 3})


def test_shared_projection_over_towers_of_different_sizes_is_refused_at_configuration(tmp_path, title_pairs):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize

    from dual_encoder.models import resolve_model_location

    base = SentenceTransformer(resolve_model_location("all-MiniLM-L6-v2"), device="cpu")
    narrow = SentenceTransformer(modules=[base[0], base[1], Dense(384, 128), Normalize()], device="cpu")
    narrow.save(str(tmp_path / "narrow"))
    config = _config(title_pairs, tmp_path / "out", architecture="asymmetric-shared-projection",
                     query_model=str(tmp_path / "narrow"))
    with pytest.raises(ConfigurationError, match="same dimension"):
        build_training_model(config)
    with pytest.raises(ConfigurationError, match="128 dimensions"):
        build_training_model(_config(title_pairs, tmp_path / "out", architecture="asymmetric",
                                     query_model=str(tmp_path / "narrow")))
    assert not (tmp_path / "out").exists()


def test_output_folder_with_other_files_is_not_overwritten(tmp_path, title_pairs):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="not empty"):
        train(_config(title_pairs, tmp_path / "out"))
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------------- data
def test_jsonl_pairs_are_read_and_duplicates_removed_with_a_note(tmp_path, caplog):
    path = _write_lines(tmp_path / "pairs.jsonl", [
        {"query": "q1", "positive": "doc one"},
        {"query": "q1", "positive": "doc one"},
        {"query": "q2", "positive": "doc two", "negative": "doc one"},
    ])
    with caplog.at_level("WARNING"):
        data = load_training_data(path)
    assert len(data.pairs) == 2
    assert "Removed 1 duplicate training pair(s); 2 remain." in data.notes
    assert "Removed 1 duplicate" in caplog.text
    assert [data.documents[n] for n in data.pairs[1].negative_ids] == ["doc one"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "holds no training pairs"),
        ([{"query": "q1", "positive": "d"}, {"query": "q2"}, {"query": "q3", "positive": "  "}],
         r"2 line\(s\) of .* have a query but no 'positive' \(lines \[2, 3\]\)"),
        ([{"query": "", "positive": "d"}, {"query": "q", "positive": 5}], "2 field"),
    ],
)
def test_bad_jsonl_training_data_is_refused_with_counts(tmp_path, rows, message):
    path = _write_lines(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(TrainingDataError, match=message):
        load_training_data(path)


def _beir(folder: Path, qrels: str) -> Path:
    folder.mkdir()
    _write_lines(folder / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": f"document {i}"} for i in range(3)])
    _write_lines(folder / "queries.jsonl", [{"_id": f"q{i}", "text": f"question {i}"} for i in range(3)])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return folder


def test_beir_qrels_pointing_at_missing_documents_are_counted(tmp_path):
    folder = _beir(tmp_path / "beir", "q0\td0\t1\nq1\tgone\t1\nq2\talso-gone\t1\n")
    with pytest.raises(TrainingDataError, match="2 judgement"):
        load_training_data(folder)


def test_beir_queries_without_positive_are_counted(tmp_path):
    folder = _beir(tmp_path / "beir", "q0\td0\t1\nq1\td1\t0\n")
    with pytest.raises(TrainingDataError, match="1 of 2 judged queries"):
        load_training_data(folder)


def test_beir_pairs_use_title_and_text(tmp_path):
    folder = _beir(tmp_path / "beir", "q0\td0\t1\nq1\td1\t2\n")
    data = load_training_data(folder)
    assert sorted((data.queries[p.query_id], data.documents[p.document_id]) for p in data.pairs) == [
        ("question 0", "document 0"), ("question 1", "document 1")
    ]


def test_dev_split_holds_out_whole_queries_reproducibly(title_pairs):
    data = load_training_data(title_pairs)
    train_a, dev_a = split_off_dev(data, fraction=0.2, seed=7)
    train_b, dev_b = split_off_dev(data, fraction=0.2, seed=7)
    assert set(dev_a.queries) == set(dev_b.queries) and len(dev_a.queries) == 6
    assert not {p.query_id for p in train_a.pairs} & {p.query_id for p in dev_a.pairs}


def test_hard_negatives_never_include_a_positive_and_come_from_the_window(title_pairs):
    data = load_training_data(title_pairs)
    ranking = {pair.query_id: [pair.document_id] + [d for d in data.documents if d != pair.document_id]
               for pair in data.pairs}
    pairs, notes = pick_negatives(ranking, data, count=2, rank_range=(3, 8), seed=1)
    for pair in pairs:
        assert len(pair.negative_ids) == 2 and pair.document_id not in pair.negative_ids
        allowed = [d for d in ranking[pair.query_id] if d != pair.document_id][3:8]
        assert set(pair.negative_ids) <= set(allowed)
    assert notes == []


def test_training_view_of_documents_is_cut_to_the_token_budget_and_the_model_keeps_its_limit(title_pairs):
    from dual_encoder.training.trainer import _with_documents_cut

    data = load_training_data(title_pairs)
    built = build_training_model(TrainingConfig(data=title_pairs, output="unused", loss="mnrl"))
    tokenizer = built.model[0].tokenizer
    cut = _with_documents_cut(data, built.model, 12)
    assert cut.pairs == data.pairs and cut.queries == data.queries
    for document_id, text in data.documents.items():
        short = cut.documents[document_id]
        assert text.startswith(short) and short.strip()
        assert len(tokenizer(short, add_special_tokens=False)["input_ids"]) <= 12
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > 12:
            assert len(short) < len(text)
    assert built.model.max_seq_length == 256


def test_distillation_texts_are_queries_plus_query_sized_document_pieces(title_pairs, monkeypatch):
    from dual_encoder.training import trainer

    data = load_training_data(title_pairs)
    texts = trainer._distillation_texts(data, seed=3)
    queries = {data.queries[p.query_id] for p in data.pairs}
    assert queries <= set(texts) and len(texts) == len(set(texts))
    pieces = [text for text in texts if text not in queries]
    assert len(pieces) > len(data.documents)  # openings and sentences, not just one piece per document
    assert all(len(text.split()) <= trainer._DISTILLATION_OPENING_WORDS for text in pieces)
    assert all(any(text in document for document in data.documents.values()) for text in pieces[:50])
    monkeypatch.setattr(trainer, "_DISTILLATION_MAX_TEXTS", len(queries) + 5)
    capped = trainer._distillation_texts(data, seed=3)
    assert queries <= set(capped) and len(capped) == len(queries) + 5
    assert capped == trainer._distillation_texts(data, seed=3)


def test_mixed_pairs_and_triplets_without_mining_are_refused(tmp_path):
    path = _write_lines(tmp_path / "pairs.jsonl", [
        {"query": "q1", "positive": "doc one", "negative": "doc two"},
        {"query": "q2", "positive": "doc two"},
    ])
    with pytest.raises(TrainingDataError, match="1 of 2 training lines have a 'negative'"):
        train(_config(path, tmp_path / "out", hard_negatives=0))


def test_triplet_loss_without_negatives_is_refused(tmp_path, title_pairs):
    with pytest.raises(TrainingDataError, match="triplet loss needs a negative"):
        train(_config(title_pairs, tmp_path / "out", loss="triplet", hard_negatives=0))


# ------------------------------------------------------------------------------------ a few real steps
@pytest.fixture(scope="session")
def base_loss(title_pairs) -> float:
    return _ranking_loss(DualEncoder({"model": "all-MiniLM-L6-v2", "max_seq_length": 64}), title_pairs)


def _trained(tmp_path_factory, title_pairs, architecture: str, **overrides):
    output = tmp_path_factory.mktemp(architecture) / "model"
    result = train(_config(title_pairs, output, architecture=architecture, **overrides))
    return result, DualEncoder({"model": str(output), "max_seq_length": 64})


def _query_and_document_parameters(model):
    router = model[0]
    return (dict(router.sub_modules["query"].named_parameters()), dict(router.sub_modules["document"].named_parameters()))


def test_siamese_training_lowers_the_loss_and_keeps_one_set_of_weights(tmp_path_factory, title_pairs, base_loss):
    result, encoder = _trained(tmp_path_factory, title_pairs, "siamese", loss="mnrl")
    assert _ranking_loss(encoder, title_pairs) < base_loss
    assert not encoder.is_asymmetric
    text = "Tides follow the Moon."
    np.testing.assert_allclose(encoder.encode_query(text), encoder.encode_documents([text])[0], atol=1e-6)
    assert result.report["steps"] == 4
    assert result.report["history"]["loss"], "the loss curve was not recorded"
    assert not result.report["document_index_still_valid"]


@pytest.mark.parametrize("architecture", ["asymmetric", "asymmetric-shared-projection", "asymmetric-frozen-embeddings"])
def test_asymmetric_training_lowers_the_loss_and_unties_the_towers(tmp_path_factory, title_pairs, base_loss, architecture):
    # The plain asymmetric run also covers the cached loss (the others use the default, mnrl).
    loss = "cached-mnrl" if architecture == "asymmetric" else "mnrl"
    result, encoder = _trained(tmp_path_factory, title_pairs, architecture, loss=loss)
    assert _ranking_loss(encoder, title_pairs) < base_loss
    assert encoder.is_asymmetric
    query_parameters, document_parameters = _query_and_document_parameters(encoder.model)
    changed = [name for name, value in query_parameters.items() if not torch.equal(value, document_parameters[name])]
    embeddings = [name for name in query_parameters if ".embeddings." in name]
    if architecture == "asymmetric-frozen-embeddings":
        assert changed and not set(embeddings) & set(changed), "token embeddings must stay frozen and shared"
    else:
        assert any(".encoder.layer." in name for name in changed), "the two towers did not move apart"
    text = "Tides follow the Moon."
    assert not np.allclose(encoder.encode_query(text), encoder.encode_documents([text])[0], atol=1e-4)
    if architecture == "asymmetric-shared-projection":
        from sentence_transformers.base.modules import Dense

        assert isinstance(encoder.model[1], Dense), "one projection after the Router, shared by both towers"
        assert not torch.equal(encoder.model[1].linear.weight, torch.eye(384)), "the shared projection did not train"


@pytest.mark.parametrize("objective", ["distill", "contrastive", "both"])
def test_light_query_keeps_the_document_fingerprint_of_its_base(tmp_path_factory, title_pairs, objective):
    result, encoder = _trained(tmp_path_factory, title_pairs, "light-query", query_layers=2,
                               light_query_objective=objective)
    base = DualEncoder({"model": "all-MiniLM-L6-v2", "max_seq_length": 64})
    assert encoder.fingerprint.document_space == base.fingerprint.document_space
    assert encoder.fingerprint.query_tower != base.fingerprint.query_tower
    assert result.report["document_index_still_valid"]
    assert len(encoder.model[0].sub_modules["query"][0].auto_model.encoder.layer) == 2
    np.testing.assert_allclose(encoder.encode_documents(["Tides"]), base.encode_documents(["Tides"]), atol=1e-5)
    assert result.report["history"]["loss"][-1]["loss"] < result.report["history"]["loss"][0]["loss"]


def test_run_with_dev_slice_keeps_the_best_checkpoint_and_writes_report_card_and_plot(tmp_path_factory, title_pairs):
    result, encoder = _trained(tmp_path_factory, title_pairs, "siamese", dev_fraction=0.2, max_steps=None, epochs=2,
                               batch_size=12)
    report = json.loads(result.report_path.read_text())
    assert set(report["dev_before"]) == {"ndcg@10", "recall@100", "mrr@10"}
    assert report["dev_after"]["ndcg@10"] >= max(e["ndcg@10"] for e in report["history"]["dev"]) - 1e-6
    assert report["best_checkpoint"] and Path(report["best_checkpoint"]).name.startswith("checkpoint-")
    assert len(report["history"]["dev"]) == 2
    assert result.plot_path.stat().st_size > 10_000
    card = (result.model_path / "README.md").read_text()
    assert "MultipleNegativesRankingLoss" in card or "CachedMultipleNegativesRankingLoss" in card
    stored = json.loads((result.model_path / "dual_encoder.json").read_text())
    assert stored["fingerprint"]["document_space"] == encoder.fingerprint.document_space


def test_same_seed_gives_the_same_model(tmp_path_factory, title_pairs):
    first, first_encoder = _trained(tmp_path_factory, title_pairs, "siamese", max_steps=2)
    second, second_encoder = _trained(tmp_path_factory, title_pairs, "siamese", max_steps=2)
    np.testing.assert_allclose(first_encoder.encode_query("heat pumps"), second_encoder.encode_query("heat pumps"),
                               atol=1e-6)


def test_interrupted_training_still_leaves_a_usable_model(tmp_path_factory, title_pairs, monkeypatch):
    import transformers

    original = transformers.Trainer.training_step
    calls = {"count": 0}

    def interrupt_on_third_step(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", interrupt_on_third_step)
    result, encoder = _trained(tmp_path_factory, title_pairs, "siamese", max_steps=10)
    assert result.report["interrupted"] is True
    assert result.report["steps"] == 2
    assert encoder.encode_query("heat pumps").shape == (384,)
