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
from dual_encoder.training.data import TrainingData, TrainingPair, split_off_dev
from dual_encoder.training.guard import DevScores, judge, paired_gain
from dual_encoder.training.hard_negatives import Rankings, pick_negatives, rank_documents
from dual_encoder.training.sampling import batches_without_false_negatives


def _sample_rows() -> list[dict]:
    text = resources.files("dual_encoder.sample_data").joinpath("corpus.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def title_pairs(tmp_path_factory) -> Path:
    """30 (title, passage) pairs: a small task the base model does not already solve perfectly."""
    path = tmp_path_factory.mktemp("training") / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"query": row["meta"]["title"], "positive": row["content"]}) + "\n" for row in _sample_rows()
        ),
        encoding="utf-8",
    )
    return path


def _write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _config(data, output, **overrides) -> TrainingConfig:
    options = dict(
        data=data,
        output=output,
        epochs=1,
        max_steps=4,
        batch_size=8,
        mini_batch_size=4,
        learning_rate=2e-4,
        hard_negatives=1,
        negative_rank_range=(1, 5),
        dev_fraction=0.0,
        max_seq_length=64,
        progress_bar=False,
        precision="fp32",  # the same arithmetic on every CPU; the CLI test below runs the default (auto)
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
        ({"negative_relative_margin": 1.0}, "negative_relative_margin"),
        ({"learning_rate": -1e-5}, "learning_rate"),
        ({"precision": "fp16"}, "precision must be one of"),
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
    config = _config(
        title_pairs, tmp_path / "out", architecture="asymmetric-shared-projection", query_model=str(tmp_path / "narrow")
    )
    with pytest.raises(ConfigurationError, match="same dimension"):
        build_training_model(config)
    with pytest.raises(ConfigurationError, match="128 dimensions"):
        build_training_model(
            _config(title_pairs, tmp_path / "out", architecture="asymmetric", query_model=str(tmp_path / "narrow"))
        )
    assert not (tmp_path / "out").exists()


def test_output_folder_with_other_files_is_not_overwritten(tmp_path, title_pairs):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="not empty"):
        train(_config(title_pairs, tmp_path / "out"))
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------------- data
def test_jsonl_pairs_are_read_and_duplicates_removed_with_a_note(tmp_path, caplog):
    path = _write_lines(
        tmp_path / "pairs.jsonl",
        [
            {"query": "q1", "positive": "doc one"},
            {"query": "q1", "positive": "doc one"},
            {"query": "q2", "positive": "doc two", "negative": "doc one"},
        ],
    )
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
        (
            [{"query": "q1", "positive": "d"}, {"query": "q2"}, {"query": "q3", "positive": "  "}],
            r"2 line\(s\) of .* have a query but no 'positive' \(lines \[2, 3\]\)",
        ),
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
        ("question 0", "document 0"),
        ("question 1", "document 1"),
    ]


def test_dev_split_holds_out_whole_queries_reproducibly(title_pairs):
    data = load_training_data(title_pairs)
    train_a, dev_a = split_off_dev(data, fraction=0.2, seed=7)
    train_b, dev_b = split_off_dev(data, fraction=0.2, seed=7)
    assert set(dev_a.queries) == set(dev_b.queries) and len(dev_a.queries) == 6
    assert not {p.query_id for p in train_a.pairs} & {p.query_id for p in dev_a.pairs}


def test_hard_negatives_never_include_a_positive_and_come_from_the_window(title_pairs):
    data = load_training_data(title_pairs)
    ranking = {
        pair.query_id: [pair.document_id] + [d for d in data.documents if d != pair.document_id] for pair in data.pairs
    }
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
    path = _write_lines(
        tmp_path / "pairs.jsonl",
        [
            {"query": "q1", "positive": "doc one", "negative": "doc two"},
            {"query": "q2", "positive": "doc two"},
        ],
    )
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
    return (
        dict(router.sub_modules["query"].named_parameters()),
        dict(router.sub_modules["document"].named_parameters()),
    )


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
def test_asymmetric_training_lowers_the_loss_and_unties_the_towers(
    tmp_path_factory, title_pairs, base_loss, architecture
):
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
    result, encoder = _trained(
        tmp_path_factory, title_pairs, "light-query", query_layers=2, light_query_objective=objective
    )
    base = DualEncoder({"model": "all-MiniLM-L6-v2", "max_seq_length": 64})
    assert encoder.fingerprint.document_space == base.fingerprint.document_space
    assert encoder.fingerprint.query_tower != base.fingerprint.query_tower
    assert result.report["document_index_still_valid"]
    assert len(encoder.model[0].sub_modules["query"][0].auto_model.encoder.layer) == 2
    np.testing.assert_allclose(encoder.encode_documents(["Tides"]), base.encode_documents(["Tides"]), atol=1e-5)
    assert result.report["history"]["loss"][-1]["loss"] < result.report["history"]["loss"][0]["loss"]


def test_run_with_dev_slice_saves_what_the_guard_chose_and_writes_report_card_and_plot(tmp_path_factory, title_pairs):
    result, encoder = _trained(
        tmp_path_factory, title_pairs, "siamese", dev_fraction=0.2, max_steps=None, epochs=2, batch_size=12
    )
    report = json.loads(result.report_path.read_text())
    guard = report["guard"]
    assert set(report["dev_before"]) == {"ndcg@10", "mrr@10", "recall@10"}
    assert [row["step"] for row in guard["checkpoints"]] == [1, 2, 3, 4]  # at least four evaluations per run
    assert report["dev_corpus"]["documents"] == len(load_training_data(title_pairs).documents)
    base = DualEncoder({"model": "all-MiniLM-L6-v2", "max_seq_length": 64})  # the run's base, as configured
    if report["status"] == "improved":
        chosen = max(guard["checkpoints"], key=lambda row: row["ndcg@10"])
        assert guard["chosen_step"] == chosen["step"] and chosen["beats_base"]
        assert report["dev_after"]["ndcg@10"] == chosen["ndcg@10"]
        assert encoder.fingerprint != base.fingerprint
    else:
        assert report["status"] == "no_improvement" and not any(row["beats_base"] for row in guard["checkpoints"])
        assert report["dev_after"] == report["dev_before"]
        assert encoder.fingerprint == base.fingerprint
    assert result.plot_path.stat().st_size > 10_000
    card = (result.model_path / "README.md").read_text()
    assert f"**Status: `{report['status']}`.**" in card
    assert card.count("| checkpoint") == 4 and "| base | 0 |" in card
    stored = json.loads((result.model_path / "dual_encoder.json").read_text())
    assert stored["fingerprint"]["document_space"] == encoder.fingerprint.document_space
    assert stored["training_status"] == report["status"]


def test_same_seed_gives_the_same_model(tmp_path_factory, title_pairs):
    first, first_encoder = _trained(tmp_path_factory, title_pairs, "siamese", max_steps=2)
    second, second_encoder = _trained(tmp_path_factory, title_pairs, "siamese", max_steps=2)
    np.testing.assert_allclose(
        first_encoder.encode_query("heat pumps"), second_encoder.encode_query("heat pumps"), atol=1e-6
    )


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


# ------------------------------------------------------------------------- guard, plan and budget (one tiny run)
@pytest.fixture(scope="module")
def run_that_cannot_improve(tmp_path_factory, title_pairs):
    """``dual-encoder train`` at learning rate 0, with a 2-step budget below its 3 epochs (9 steps)."""
    from typer.testing import CliRunner

    from dual_encoder.cli import app

    output = tmp_path_factory.mktemp("unchanged") / "model"
    outcome = CliRunner().invoke(
        app,
        [
            "train",
            str(title_pairs),
            "--output",
            str(output),
            "--learning-rate",
            "0",
            "--epochs",
            "3",
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--dev-fraction",
            "0.2",
            "--negative-ranks",
            "1:5",
            "--no-progress",
        ],
    )
    return outcome, output, " ".join(outcome.output.split())


def test_a_run_that_cannot_improve_keeps_the_base_model_says_so_and_exits_3(run_that_cannot_improve):
    from dual_encoder.training import NO_IMPROVEMENT_EXIT_CODE

    outcome, output, text = run_that_cannot_improve
    assert outcome.exit_code == NO_IMPROVEMENT_EXIT_CODE == 3, text
    assert "No improvement: no checkpoint beat the base model" in text
    assert "The output folder holds the base model, unchanged." in text
    report = json.loads((output / "training_report.json").read_text())
    assert report["status"] == "no_improvement" and report["saved_model"] == "base"
    assert report["guard"]["checkpoints"] and all(row["gain"] == 0 for row in report["guard"]["checkpoints"])
    base = DualEncoder("all-MiniLM-L6-v2")
    kept = DualEncoder(str(output))
    assert kept.fingerprint == base.fingerprint
    np.testing.assert_allclose(kept.encode_query("heat pumps"), base.encode_query("heat pumps"), atol=1e-6)
    card = (output / "README.md").read_text()
    assert "**Status: `no_improvement`.**" in card and "| base | 0 |" in card


def test_the_plan_is_printed_before_training(run_that_cannot_improve):
    _, _, text = run_that_cannot_improve
    plan = text.index("Plan: 24 training pairs over 24 queries")
    assert text.index("Time estimate from steps 2-2") > plan  # measured on the first steps, after the plan
    assert "batch 8, 3 steps per epoch" in text
    assert "Dev slice: 6 queries, evaluated before training and every 1 steps (2 times)" in text
    before = text.index("Dev slice before training (the base model): ndcg@10")
    assert plan < before < text.index("Dev slice at step 1: ndcg@10") < text.index("Dev slice at step 2: ndcg@10")
    assert "nDCG@10 gain over the base +0.0000 ± 0.0000 (standard error)" in text


def test_the_step_budget_binds(run_that_cannot_improve):
    _, output, text = run_that_cannot_improve
    assert "3 epochs would take 9 steps; the step budget (max_steps 2) stops training after 2 steps" in text
    report = json.loads((output / "training_report.json").read_text())
    assert report["steps"] == 2 and report["plan"]["budget_binds"] and report["plan"]["steps_for_epochs"] == 9
    assert [row["step"] for row in report["guard"]["checkpoints"]] == [1, 2]


@pytest.mark.parametrize(
    ("precision", "native", "warned"), [("bf16", False, True), ("bf16", True, False), ("fp32", False, False)]
)
def test_the_plan_warns_when_bf16_would_be_emulated(monkeypatch, precision, native, warned):
    from dual_encoder.training import trainer

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    plan = {
        "training_pairs": 10, "training_queries": 10, "positives_per_query_mean": 1, "positives_per_query_max": 1,
        "batch_size": 2, "steps_per_epoch": 5, "budget_binds": False, "budget_steps": 120, "steps": 5,
        "dev_queries": 0,
    }  # fmt: skip
    text = trainer._plan_text(plan, TrainingConfig(data="unused", output="unused"), precision)
    assert f"Precision: {precision}." in text
    assert ("bf16 is emulated" in text and "--precision auto" in text) is warned


@pytest.mark.parametrize(
    ("native", "timing", "chosen"),
    [
        (False, None, "fp32"),
        (True, {"fp32_ms": 100.0, "bf16_ms": 40.0}, "bf16"),
        (True, {"fp32_ms": 100.0, "bf16_ms": 95.0}, "fp32"),  # within noise of fp32: not worth bf16's rounding
        (True, {"fp32_ms": 100.0, "bf16_ms": 180.0}, "fp32"),  # native bf16 that is slower (no AMX)
    ],
)
def test_auto_precision_picks_bf16_only_where_it_measured_faster(monkeypatch, native, timing, chosen):
    from dual_encoder.training import trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(trainer, "bf16_timing", lambda: timing)
    assert trainer.resolve_precision("auto") == chosen
    assert trainer.resolve_precision("bf16") == "bf16" and trainer.resolve_precision("fp32") == "fp32"
    note = trainer._auto_precision_note("auto", chosen)
    if native:
        assert f"{timing['bf16_ms']:g} ms in bf16 against {timing['fp32_ms']:g} ms in fp32" in note
        assert f"auto chose {chosen}" in note
    else:
        assert note is None


def test_bf16_timing_measures_both_precisions_and_leaves_the_random_state_alone():
    from dual_encoder.training import trainer

    before = torch.random.get_rng_state()
    timing = trainer.bf16_timing.__wrapped__()  # uncached: this test measures
    assert torch.equal(torch.random.get_rng_state(), before)
    assert set(timing) == {"fp32_ms", "bf16_ms"}
    assert timing["fp32_ms"] > 0 and timing["bf16_ms"] > 0


# ----------------------------------------------------------------------------------- the guard's arithmetic
def _scores(step: int, ndcg: list[float]) -> DevScores:
    values = np.array(ndcg)
    return DevScores(step=step, epoch=None, per_query={"ndcg@10": values, "mrr@10": values, "recall@10": values})


def test_paired_standard_error_is_that_of_the_mean_per_query_difference():
    gain, error = paired_gain(_scores(1, [0.6, 0.8, 0.4, 0.6]), _scores(0, [0.5, 0.5, 0.5, 0.5]))
    assert gain == pytest.approx(0.1)
    assert error == pytest.approx(np.std([0.1, 0.3, -0.1, 0.1], ddof=1) / 2)


def test_guard_keeps_the_best_checkpoint_only_when_it_beats_the_base_beyond_the_noise():
    base = _scores(0, [0.5] * 20)
    noisy = _scores(10, [0.9, 0.1] * 10)  # same mean, large spread
    small = _scores(20, [0.52, 0.5] * 10)  # +0.01, every query at least as good
    verdict = judge(base, [noisy, small], threshold=2.0)
    assert verdict.status == "improved" and verdict.chosen_step == 20
    assert verdict.chosen["ndcg@10"] == pytest.approx(0.51)
    lucky = _scores(30, [0.9, 0.2] * 10)  # +0.05 on average, but a standard error of about 0.08
    verdict = judge(base, [lucky], threshold=2.0)
    assert verdict.status == "no_improvement" and verdict.chosen_step is None
    assert verdict.chosen == verdict.base
    assert "No improvement" in verdict.message() and "+0.0500" in verdict.message()
    assert judge(base, [_scores(40, [0.4] * 20)], threshold=0.0).status == "no_improvement"


# ------------------------------------------------------------------------------------ negatives and batches
def test_mined_negatives_respect_the_margin_against_the_positive_score():
    data = TrainingData(
        queries={"q": "query"}, documents={f"d{i}": f"doc {i}" for i in range(12)}, pairs=[TrainingPair("q", "d0")]
    )
    ranked = [f"d{i}" for i in range(1, 12)]
    rankings = Rankings(
        ids={"q": ranked}, scores={"q": [0.95 - 0.05 * i for i in range(11)]}, positive_scores={("q", "d0"): 0.85}
    )
    # Ranks 0-3 hold d1-d4 (0.95-0.80): all above 0.9 x the positive's 0.85, so none may be chosen.
    pairs, notes = pick_negatives(rankings, data, count=3, rank_range=(0, 4), seed=0, relative_margin=0.1)
    chosen = pairs[0].negative_ids
    scores = dict(zip(ranked, rankings.scores["q"]))
    assert len(chosen) == 3 and all(scores[doc] <= 0.85 * 0.9 for doc in chosen)
    assert set(chosen) == {"d5", "d6", "d7"}  # the nearest candidates past the window that clear the margin
    assert any("4 candidate negative(s) in ranks 0-4 scored within the margin" in note for note in notes)
    capped, _ = pick_negatives(rankings, data, count=2, rank_range=(0, 11), seed=0, max_score=0.5)
    assert all(scores[doc] <= 0.5 for doc in capped[0].negative_ids)


def test_negatives_mined_with_the_base_encoder_score_below_the_margin(title_pairs):
    data = load_training_data(title_pairs)
    encoder = DualEncoder({"model": "all-MiniLM-L6-v2", "max_seq_length": 64})
    rankings = rank_documents(encoder, data.queries, data.documents, depth=30, pairs=data.pairs, progress_bar=False)
    pairs, _ = pick_negatives(rankings, data, count=2, rank_range=(0, 10), seed=3, relative_margin=0.3)
    queries = encoder.encode_queries([data.queries[p.query_id] for p in pairs], progress_bar=False)
    for vector, pair in zip(queries, pairs):
        positive = float(vector @ encoder.encode_documents([data.documents[pair.document_id]])[0])
        negatives = encoder.encode_documents([data.documents[d] for d in pair.negative_ids])
        assert pair.negative_ids and all(float(vector @ n) <= 0.7 * positive + 1e-5 for n in negatives)


def test_batches_hold_one_pair_per_query_and_no_known_positive_of_another_row():
    relevant = {f"q{q}": {f"d{q}-{i}" for i in range(10)} | {"shared"} for q in range(3)}
    relevant["q3"] = {"d3-0"}
    rows = [(query, (document,)) for query, documents in relevant.items() for document in sorted(documents)]
    batches = list(batches_without_false_negatives(list(range(len(rows))), rows, relevant, batch_size=4))
    assert sorted(index for batch in batches for index in batch) == list(range(len(rows)))
    for batch in batches:
        queries = [rows[i][0] for i in batch]
        assert len(queries) == len(set(queries)), "two pairs of one query in a batch"
        for i in batch:
            for j in batch:
                if i != j:
                    assert not set(rows[j][1]) & relevant[rows[i][0]], "a known positive as an in-batch negative"
    assert len(batches[0]) == 4  # q0, q1, q2 and q3 fit in one batch while they have rows left
