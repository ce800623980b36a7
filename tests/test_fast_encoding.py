"""The OpenVINO backends and ``backend="auto"``: same space as float32 torch, separate shared instances, the
machine's CPUs used whatever the topology shows, a fall-back to torch with one warning, clear errors."""

import json
import logging
from importlib import resources

import numpy as np
import pytest

from dual_encoder import acceleration, cpus
from dual_encoder.acceleration import CpuLayout, cpu_layout, resolve_backend
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


@pytest.fixture(scope="module")
def minilm():
    """The float32 torch reference (named, since the default backend is "auto")."""
    return DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "torch"}).load()


def test_backend_round_trips_and_defaults_to_torch():
    assert EncoderConfig().backend == "torch"
    assert "backend" in EncoderConfig().to_dict()
    for backend in BACKENDS:
        config = EncoderConfig(model="all-MiniLM-L6-v2", backend=backend, device="cpu")
        assert EncoderConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("backend", ["bf16", "onnx", "OpenVINO", "Auto", None])
def test_unknown_backend_is_refused_with_the_allowed_values(backend):
    allowed = r"\('auto', 'torch', 'openvino', 'openvino-bf16', 'openvino-int8'\)"
    with pytest.raises(ConfigurationError, match=r"backend must be one of " + allowed):
        EncoderConfig(backend=backend)


def test_openvino_backends_refuse_a_gpu_device_and_auto_accepts_one():
    with pytest.raises(ConfigurationError, match="runs on the CPU"):
        EncoderConfig(backend="openvino-bf16", device="cuda:0")
    assert EncoderConfig(backend="auto", device="cuda:0").backend == "auto"


# ------------------------------------------------------------------------------------------ backend="auto"
def _cpu_has_bf16(monkeypatch, value: bool) -> None:
    """Pretend the CPU flag probe found (or did not find) native bfloat16; the encoder itself is real."""
    monkeypatch.setattr(acceleration, "cpu_has_bf16", lambda: value)
    monkeypatch.setattr(acceleration, "default_device", lambda: "cpu")


@pytest.mark.parametrize("has_bf16, expected", [(True, "openvino-bf16"), (False, "torch")])
def test_auto_picks_openvino_bf16_exactly_when_the_cpu_has_bf16(monkeypatch, has_bf16, expected):
    _cpu_has_bf16(monkeypatch, has_bf16)
    assert resolve_backend("auto", None) == resolve_backend("auto", "cpu") == expected
    encoder = DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "auto"})
    # The instance is the one the resolved backend gets when asked for by name: bf16 really is compiled.
    assert encoder.model is load_shared_model("all-MiniLM-L6-v2", backend=expected)
    assert acceleration.runs_on_openvino(encoder.model) is has_bf16
    if has_bf16:
        capabilities = acceleration.import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        real_cpu_has_bf16 = "BF16" in capabilities
        assert encoder.backend == ("openvino-bf16" if real_cpu_has_bf16 else "openvino")
    else:
        assert encoder.backend == "torch"


def test_auto_runs_torch_on_a_gpu(monkeypatch):
    _cpu_has_bf16(monkeypatch, True)
    assert resolve_backend("auto", "cuda:0") == "torch"
    assert resolve_backend("auto", "mps") == "torch"
    monkeypatch.setattr(acceleration, "default_device", lambda: "cuda")
    assert resolve_backend("auto", None) == "torch"  # unset device: sentence-transformers would pick the GPU
    assert resolve_backend("auto", "cpu") == "openvino-bf16"  # the CPU asked for explicitly
    assert resolve_backend("openvino-int8", None) == "openvino-int8"  # named backends are never changed


def test_auto_vectors_match_torch(minilm):
    documents, questions = _sample_texts()
    documents = documents + [" ".join(documents[i : i + 8]) for i in range(0, len(documents), 8)]
    auto = DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "auto"})
    assert auto.backend == ("openvino-bf16" if acceleration.cpu_has_bf16() else "torch")
    assert auto.fingerprint == minilm.fingerprint
    assert _cosines(auto.encode_documents(documents), minilm.encode_documents(documents)).min() >= 0.999
    assert _cosines(auto.encode_queries(questions), minilm.encode_queries(questions)).min() >= 0.999


def _static_embedding_model(folder):
    """A model whose first module is not a transformer: OpenVINO's converter here cannot take it."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "tides": 1, "moon": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    static = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)], device="cpu")
    static.save(str(folder))
    return folder


def _all_hidden_states_model(folder):
    """all-MiniLM-L6-v2 set to return every layer's hidden states: torch runs it, the OpenVINO backends cannot."""
    from sentence_transformers import SentenceTransformer

    from dual_encoder.models import resolve_model_location

    model = SentenceTransformer(resolve_model_location("all-MiniLM-L6-v2"), device="cpu")
    model[0].auto_model.config.output_hidden_states = True
    model.save(str(folder))
    return folder


def _auto_warnings(caplog) -> list[str]:
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    return [message for message in messages if "backend='auto'" in message]


def test_auto_falls_back_to_torch_with_exactly_one_warning(tmp_path, monkeypatch, caplog):
    _cpu_has_bf16(monkeypatch, True)
    folder = str(_all_hidden_states_model(tmp_path / "all-hidden-states"))
    texts = ["Tides are caused by the Moon.", "The Moon orbits the Earth."]
    with caplog.at_level(logging.WARNING, logger="dual_encoder"):
        first = DualEncoder({"model": folder, "backend": "auto"})
        vectors = first.encode_documents(texts)
        second = DualEncoder({"model": folder, "backend": "auto", "query_prompt": "q: "})
        second.encode_queries(["What causes tides?"])
    warnings = _auto_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert folder in warnings[0] and "output_hidden_states" in warnings[0] and "runs on torch" in warnings[0]
    assert first.backend == second.backend == "torch" and second.model is first.model
    torch_vectors = DualEncoder({"model": folder, "backend": "torch"}).encode_documents(texts)
    np.testing.assert_allclose(vectors, torch_vectors, atol=1e-6)
    # Asked for by name, the backend still refuses the model instead of quietly running something else.
    with pytest.raises(ConfigurationError, match="output_hidden_states"):
        DualEncoder({"model": folder, "backend": "openvino-bf16"}).load()


def test_a_conversion_failing_on_the_second_tower_leaves_no_tower_converted(asymmetric_model_dir, monkeypatch, caplog):
    """OpenVINO failing inside the conversion (not only the up-front checks) also falls back, and the model
    is never left with one tower on OpenVINO and the other on torch."""
    _cpu_has_bf16(monkeypatch, True)
    compile_transformer = acceleration._compile_transformer
    calls = []

    def fails_on_second_tower(core, module, precision, *, name):
        calls.append(module)
        if len(calls) == 2:
            raise RuntimeError("Exception from src/frontends/pytorch: unsupported operation aten::made_up")
        return compile_transformer(core, module, precision, name=name)

    monkeypatch.setattr(acceleration, "_compile_transformer", fails_on_second_tower)
    with caplog.at_level(logging.WARNING, logger="dual_encoder"):
        encoder = DualEncoder({"model": str(asymmetric_model_dir), "backend": "auto", "max_seq_length": 200})
        encoder.load()
    assert len(calls) == 2
    assert [w for w in _auto_warnings(caplog) if "aten::made_up" in w] and len(_auto_warnings(caplog)) == 1
    router = encoder.model[0]
    assert not any(
        isinstance(router.sub_modules[route][0].forward, acceleration._OpenVINOForward)
        for route in ("query", "document")
    )
    assert encoder.backend == "torch"


# ------------------------------------------------------------------------------------------- CPU layout
def _fake_topology(root, cores_of_cpus: list[int]) -> None:
    for cpu, core in enumerate(cores_of_cpus):
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text("0\n")
        (folder / "core_id").write_text(f"{core}\n")


@pytest.mark.parametrize(
    "cores_of_cpus, torch_threads, expected",
    [
        ([0, 1], 2, CpuLayout(logical_cpus=2, physical_cores=2, inference_threads=2)),  # two cores
        # Two vCPUs shown as threads of one core: torch counts one thread, OpenVINO still gets both CPUs.
        ([0, 0], 1, CpuLayout(logical_cpus=2, physical_cores=1, inference_threads=2)),
        ([0, 0, 1, 1], 2, CpuLayout(logical_cpus=4, physical_cores=2, inference_threads=4)),
        # torch limited by the user: OpenVINO follows
        ([0, 1, 2, 3], 3, CpuLayout(logical_cpus=4, physical_cores=4, inference_threads=3)),
    ],
)
def test_cpu_layout_counts_logical_cpus_that_share_a_core(
    tmp_path, monkeypatch, cores_of_cpus, torch_threads, expected
):
    import torch

    _fake_topology(tmp_path, cores_of_cpus)
    monkeypatch.setattr(cpus, "affinity", lambda: list(range(len(cores_of_cpus))))
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert cpu_layout(topology_root=tmp_path) == expected


def test_cpu_layout_respects_a_cgroup_quota(tmp_path, monkeypatch):
    import torch

    _fake_topology(tmp_path, list(range(8)))
    monkeypatch.setattr(cpus, "affinity", lambda: list(range(8)))
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 1.5)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert cpu_layout(topology_root=tmp_path) == CpuLayout(logical_cpus=2, physical_cores=2, inference_threads=2)


def test_the_compiled_transformer_runs_on_the_layout_it_was_given(minilm_bf16):
    """OpenVINO honours the layout's thread count (second threads of cores included) rather than its own
    physical-core count, and splits it into single-thread streams for throughput."""
    compiled = minilm_bf16.model[0].forward.compiled
    layout = CpuLayout(logical_cpus=2, physical_cores=1, inference_threads=2)
    assert layout.openvino_properties(throughput=True)["ENABLE_HYPER_THREADING"] is True
    fresh = acceleration._CompiledTransformer(
        acceleration.import_openvino().Core(), compiled._ov_model, compiled._properties, layout
    )
    assert int(fresh.latency.get_property("INFERENCE_NUM_THREADS")) == 2
    assert int(fresh.throughput.get_property("NUM_STREAMS")) == 2
    assert int(fresh.throughput.get_property("INFERENCE_NUM_THREADS")) == 2
    assert fresh.throughput_requests == 2


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
    documents = documents + [" ".join(documents[i : i + 8]) for i in range(0, len(documents), 8)]
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
    documents = documents + [" ".join(documents[i : i + 8]) for i in range(0, len(documents), 8)]
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
    same_top = (fast_queries @ fast_documents.T).argmax(1) == (fast_queries @ reference_documents.T).argmax(1)
    assert same_top.mean() >= 0.95


def test_many_texts_through_the_throughput_streams_match_one_batch_at_a_time():
    """Many texts run on the throughput compile, split among its streams from worker threads; they must
    come back in input order with the vectors the latency compile gives each text on its own."""
    from dual_encoder.acceleration import throughput_requests

    documents, _ = _sample_texts()
    documents = documents + [" ".join(documents[i : i + 3]) for i in range(len(documents))]
    encoder = DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "openvino", "batch_size": 4})
    assert len(documents) > 4 * encoder.config.batch_size
    one_at_a_time = np.concatenate([encoder.encode_documents([text]) for text in documents])
    streamed = encoder.encode_documents(documents)
    # One request in flight per OpenVINO stream, the streams over every inference thread of the machine's layout.
    throughput = encoder.model[0].forward.compiled.throughput
    assert throughput_requests(encoder.model[0]) == int(throughput.get_property("NUM_STREAMS")) >= 1
    assert int(throughput.get_property("INFERENCE_NUM_THREADS")) == cpu_layout().inference_threads
    assert throughput_requests(DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "torch"}).model[0]) == 1
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
    folder = _static_embedding_model(tmp_path / "static")
    with pytest.raises(ConfigurationError, match="StaticEmbedding. Use backend='torch'"):
        DualEncoder({"model": str(folder), "backend": "openvino-bf16"}).load()
