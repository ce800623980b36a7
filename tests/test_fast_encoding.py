"""The OpenVINO backends (issue 5): same space as float32 torch, separate shared instances, clear errors."""

import json
from importlib import resources

import numpy as np
import pytest

from dual_encoder.config import BACKENDS, EncoderConfig
from dual_encoder.encoder import DualEncoder
from dual_encoder.errors import ConfigurationError
from dual_encoder.models import load_shared_model


def _sample_texts() -> tuple[list[str], list[str]]:
    folder = resources.files("dual_encoder") / "sample_data"
    rows = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines() if line.strip()]
    documents = [f"{row['meta'].get('title', '')} {row['content']}".strip() for row in rows]
    questions = [line.strip() for line in (folder / "questions.txt").read_text().splitlines() if line.strip()]
    return documents, questions


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def minilm_bf16():
    return DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "openvino-bf16"}).load()


def test_backend_round_trips_and_defaults_to_torch():
    assert EncoderConfig().backend == "torch"
    assert "backend" in EncoderConfig().to_dict()
    for backend in BACKENDS:
        config = EncoderConfig(model="all-MiniLM-L6-v2", backend=backend, device="cpu")
        assert EncoderConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("backend", ["bf16", "onnx", "OpenVINO", None])
def test_unknown_backend_is_refused_with_the_allowed_values(backend):
    with pytest.raises(ConfigurationError, match=r"backend must be one of \('torch', 'openvino', 'openvino-bf16', 'openvino-int8'\)"):
        EncoderConfig(backend=backend)


def test_openvino_backends_refuse_a_gpu_device():
    with pytest.raises(ConfigurationError, match="runs on the CPU"):
        EncoderConfig(backend="openvino-bf16", device="cuda:0")


def test_each_backend_gets_its_own_shared_instance(minilm, minilm_bf16):
    assert minilm_bf16.model is not minilm.model
    assert load_shared_model("all-MiniLM-L6-v2", backend="openvino-bf16") is minilm_bf16.model
    assert load_shared_model("all-MiniLM-L6-v2") is minilm.model
    assert DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "openvino-bf16", "query_prompt": "q: "}).model is (
        minilm_bf16.model
    )


def test_bf16_embeddings_match_float32_on_real_text(minilm, minilm_bf16):
    documents, questions = _sample_texts()
    # Long texts (up to the 256-token limit) accumulate the most bfloat16 rounding.
    documents = documents + [" ".join(documents[i:i + 8]) for i in range(0, len(documents), 8)]
    reference_documents = minilm.encode_documents(documents)
    fast_documents = minilm_bf16.encode_documents(documents)
    assert fast_documents.dtype == np.float32 and fast_documents.shape == reference_documents.shape
    np.testing.assert_allclose(np.linalg.norm(fast_documents, axis=1), 1.0, atol=1e-5)
    assert _cosines(fast_documents, reference_documents).min() > 0.999
    fast_queries = minilm_bf16.encode_queries(questions)
    assert _cosines(fast_queries, minilm.encode_queries(questions)).min() > 0.999
    # Same ranking on the sample corpus for every question.
    assert ((fast_queries @ fast_documents.T).argmax(1) == (fast_queries @ reference_documents.T).argmax(1)).all()


def test_int8_embeddings_stay_close_to_float32_and_rank_the_same(minilm):
    from dual_encoder.acceleration import INT8_ACTIVATION_GROUP

    documents, questions = _sample_texts()
    documents = documents + [" ".join(documents[i:i + 8]) for i in range(0, len(documents), 8)]
    int8 = DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "openvino-int8"}).load()
    assert int8.model is not minilm.model and int8.fingerprint == minilm.fingerprint
    compiled = int8.model[0].forward.compiled
    for runtime in (compiled.latency, compiled.throughput):
        assert runtime.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == INT8_ACTIVATION_GROUP
        # The fully connected layers really run in int8 (not silently left in floating point).
        layers = [op.get_rt_info() for op in runtime.get_runtime_model().get_ordered_ops()]
        fully_connected = [info for info in layers if info["layerType"].astype(str) == "FullyConnected"]
        assert len(fully_connected) == 36
        assert {info["runtimePrecision"].astype(str) for info in fully_connected} == {"i8"}
    reference_documents = minilm.encode_documents(documents)
    fast_documents = int8.encode_documents(documents)
    assert _cosines(fast_documents, reference_documents).min() > 0.995
    fast_queries = int8.encode_queries(questions)
    assert _cosines(fast_queries, minilm.encode_queries(questions)).min() > 0.995
    assert ((fast_queries @ fast_documents.T).argmax(1) == (fast_queries @ reference_documents.T).argmax(1)).mean() >= 0.95


def test_many_texts_through_the_throughput_streams_match_one_batch_at_a_time():
    """Many texts run on the throughput compile, split among its streams from worker threads; they must
    come back in input order with the vectors the latency compile gives each text on its own."""
    from dual_encoder.acceleration import throughput_requests

    documents, _ = _sample_texts()
    documents = documents + [" ".join(documents[i:i + 3]) for i in range(len(documents))]
    encoder = DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "openvino", "batch_size": 4})
    assert len(documents) > 4 * encoder.config.batch_size
    one_at_a_time = np.concatenate([encoder.encode_documents([text]) for text in documents])
    streamed = encoder.encode_documents(documents)
    assert throughput_requests(encoder.model[0]) >= 1
    np.testing.assert_allclose(streamed, one_at_a_time, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_documents(documents, progress_bar=True), one_at_a_time, atol=1e-5)


def test_a_failing_batch_stops_the_streamed_encoding(monkeypatch):
    import time

    encoder = DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "openvino", "batch_size": 2}).load()
    calls = []

    def run_in_stream(texts, *, route, prompt):
        calls.append(texts)
        if len(calls) == 1:
            raise RuntimeError("batch failed")
        time.sleep(0.05)
        return np.zeros((len(texts), encoder.dimension), dtype=np.float32)

    monkeypatch.setattr(encoder, "_run_in_stream", run_in_stream)
    with pytest.raises(RuntimeError, match="batch failed"):
        encoder.encode_documents([f"Document number {i}." for i in range(60)])
    # 60 requests were queued; the ones not yet started when the first failed never run.
    assert len(calls) < 10


def test_backend_does_not_change_the_fingerprint(minilm, minilm_bf16):
    # Same weights, same space: a torch-built index is queried by the fast encoder and vice versa.
    assert minilm_bf16.fingerprint == minilm.fingerprint


def test_asymmetric_model_runs_both_towers_through_openvino(asymmetric_model_dir):
    # backend="openvino" (float32) here, so both towers are checked against torch to rounding error.
    documents, questions = _sample_texts()
    reference = DualEncoder(str(asymmetric_model_dir))
    fast = DualEncoder({"model": str(asymmetric_model_dir), "backend": "openvino"})
    assert fast.is_asymmetric
    assert fast.model[0].sub_modules["query"][0].forward is not fast.model[0].sub_modules["document"][0].forward
    np.testing.assert_allclose(fast.encode_queries(questions), reference.encode_queries(questions), atol=1e-4)
    np.testing.assert_allclose(fast.encode_documents(documents), reference.encode_documents(documents), atol=1e-4)
    assert fast.fingerprint == reference.fingerprint


def test_models_that_do_not_start_with_a_transformer_are_refused(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "tides": 1, "moon": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    static = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)], device="cpu")
    static.save(str(tmp_path / "static"))
    with pytest.raises(ConfigurationError, match="StaticEmbedding. Use backend='torch'"):
        DualEncoder({"model": str(tmp_path / "static"), "backend": "openvino-bf16"}).load()
