"""Faster CPU encoding: stock float32 torch vs a fast backend (default ``"auto"``) on SciFact.

Both encoders run in this one process, alternating (the machine is shared and noisy, so only ratios
within one run mean anything), on the SciFact corpus embedded as BEIR does (title + " " + text, 256
tokens). Reports median documents/s of each, the ratio, cosine between the two embeddings of every
document, single-query latency, and nDCG@10 on the SciFact test split for both (the fast path also end to
end through ``evaluate_embedded``).

    .venv/bin/python benchmarks/fast_encoding.py             # full corpus (5,183 docs), 3 runs each
    .venv/bin/python benchmarks/fast_encoding.py --sample 500 --runs 5
    .venv/bin/python benchmarks/fast_encoding.py --sample 1000 --backend openvino-int8

The result records what decides the speed-up on a machine (see ``_cpu.py``): the CPU topology and the
thread layout OpenVINO compiled, a memory-bandwidth probe, steal time and the load during the run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from _common import SCIFACT, machine, summary, timed, write_result
from _cpu import StealMeter, cpu_topology, memory_bandwidth_gb_s

FAST = "auto"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each path (alternating)")
    parser.add_argument("--sample", type=int, default=0, help="time a fixed random sample of N documents (0: all)")
    parser.add_argument("--backend", default=FAST, help="the fast path's backend")
    parser.add_argument("--queries", type=int, default=300, help="single-query latency samples per path")
    args = parser.parse_args()

    import torch

    from dual_encoder.encoder import DualEncoder
    from dual_encoder.evaluation import EVALUATION_DEPTH, evaluate_embedded, evaluate_run, load_beir

    load_at_start = os.getloadavg()[0]
    meter = StealMeter()
    data = load_beir(SCIFACT, split="test")
    corpus_ids = list(data.corpus)
    timed_ids = corpus_ids
    if args.sample:
        timed_ids = sorted(random.Random(0).sample(corpus_ids, args.sample))
    texts = [data.corpus[i].beir_text for i in timed_ids]

    encoders = {
        "fp32": DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "torch"}),
        args.backend: DualEncoder({"model": "all-MiniLM-L6-v2", "backend": args.backend}),
    }
    load_seconds = {}
    for name, encoder in encoders.items():
        started = time.perf_counter()
        encoder.load()
        load_seconds[name] = round(time.perf_counter() - started, 2)
    assert encoders["fp32"].fingerprint == encoders[args.backend].fingerprint
    resolved = encoders[args.backend].backend
    print(f"backend {args.backend!r} runs as {resolved!r}", flush=True)
    lengths = encoders["fp32"].model[0].tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    mean_tokens = float(np.mean([len(ids) for ids in lengths]))
    print(
        f"{len(texts)} documents, {mean_tokens:.1f} tokens on average, torch threads {torch.get_num_threads()}",
        flush=True,
    )

    # "fp32" is the stock path: sentence-transformers' own encode_document on the float32 weights, batch 32,
    # which is what Haystack's SentenceTransformersDocumentEmbedder runs. "torch" is our encoder's batch loop
    # (see DualEncoder._encode) on the same weights, so the loop's own share of the speed-up shows separately.
    stock = encoders["fp32"].model
    encode_paths = {
        "fp32": lambda batch: stock.encode_document(batch, batch_size=32, convert_to_numpy=True),
        "torch": encoders["fp32"].encode_documents,
        args.backend: encoders[args.backend].encode_documents,
    }
    # Warm up every path (first-call allocations), then time alternating, rotating who goes first each round.
    for encode in encode_paths.values():
        encode(texts[:64])
    seconds: dict[str, list[float]] = {name: [] for name in encode_paths}
    vectors: dict[str, np.ndarray] = {}
    names = list(encode_paths)
    for run in range(args.runs):
        order = names[run % len(names) :] + names[: run % len(names)]
        for name in order:
            started = time.perf_counter()
            vectors[name] = np.asarray(encode_paths[name](texts), dtype=np.float32)
            seconds[name].append(time.perf_counter() - started)
            print(f"run {run + 1}/{args.runs} {name:>14}: {len(texts) / seconds[name][-1]:6.1f} docs/s", flush=True)
    rates = {name: len(texts) / statistics.median(samples) for name, samples in seconds.items()}
    np.testing.assert_allclose(vectors["torch"], vectors["fp32"], atol=1e-4)
    cosines = np.sum(vectors["fp32"] * vectors[args.backend], axis=1)

    # Single-query latency, alternating query by query ("fp32": stock encode_query; "torch": our encoder).
    query_texts = list(data.queries.values())[: args.queries]
    query_paths = {
        "fp32": lambda text: stock.encode_query(text, convert_to_numpy=True),
        "torch": encoders["fp32"].encode_query,
        args.backend: encoders[args.backend].encode_query,
    }
    latency: dict[str, list[float]] = {name: [] for name in query_paths}
    for text in query_texts:
        for name, encode_query in query_paths.items():
            latency[name].extend(timed(lambda: encode_query(text), 1))

    # nDCG@10. The fast path end to end: indexed into the embedded store and evaluated as `dual-encoder
    # evaluate` does. When the whole corpus was timed, both paths also from the timed embeddings (exact
    # search, same scoring); otherwise float32 end to end as well.
    end_to_end = {args.backend: evaluate_embedded(SCIFACT, encoder=encoders[args.backend], progress_bar=False)}
    quality = {}
    if len(timed_ids) == len(corpus_ids):
        query_ids = list(data.queries)
        for name, encoder in encoders.items():
            scores = encoder.encode_queries([data.queries[q] or " " for q in query_ids]) @ vectors[name].T
            top = np.argsort(-scores, axis=1)[:, :EVALUATION_DEPTH]
            run_scores = {q: {timed_ids[j]: float(scores[row, j]) for j in top[row]} for row, q in enumerate(query_ids)}
            quality[name] = evaluate_run(data.qrels, run_scores)["ndcg@10"]
    else:
        end_to_end["fp32"] = evaluate_embedded(SCIFACT, encoder=encoders["fp32"], progress_bar=False)
    ndcg_end_to_end = {name: report.metrics["ndcg@10"] for name, report in end_to_end.items()}

    result = {
        "what": "SciFact corpus (title + ' ' + text, 256 max tokens) encoded by all-MiniLM-L6-v2: stock float32 "
        "(sentence-transformers encode_document, batch 32) vs our encoder on torch float32 and with "
        f"backend={args.backend!r} (running as {resolved!r}), alternating runs in one process, medians",
        "backend": args.backend,
        "runs_as": resolved,
        "documents": len(texts),
        "sample": args.sample or None,
        "mean_tokens": round(mean_tokens, 1),
        "batch_size": encoders["fp32"].config.batch_size,
        "runs": args.runs,
        "load_seconds": load_seconds,
        "docs_per_second": {name: round(rate, 1) for name, rate in rates.items()},
        "docs_per_second_runs": {
            name: [round(len(texts) / s, 1) for s in samples] for name, samples in seconds.items()
        },
        "speedup": round(rates[args.backend] / rates["fp32"], 2),
        "speedup_of_our_torch_loop": round(rates["torch"] / rates["fp32"], 3),
        "cosine_to_fp32": {"min": round(float(cosines.min()), 6), "mean": round(float(cosines.mean()), 6)},
        "query_latency": {name: summary(samples) for name, samples in latency.items()},
        **(
            {"ndcg@10_from_timed_embeddings": {name: round(value, 4) for name, value in quality.items()}}
            if quality
            else {}
        ),
        "ndcg@10_end_to_end": {name: round(value, 4) for name, value in ndcg_end_to_end.items()},
        # Others share these machines: the 1-minute load average (2 cores) says how contended the run was.
        "load_average_1min": {"start": round(load_at_start, 2), "end": round(os.getloadavg()[0], 2)},
        "during_run": meter.read(),
        "cpu": cpu_topology(),
        "memory_bandwidth": memory_bandwidth_gb_s(),
        "openvino_compiled_as": _compiled_layout(encoders[args.backend]),
        "targets": {"speedup": ">= 4x fp32 docs/s", "ndcg@10": "within 0.005 of fp32 (0.6451)"},
        "openvino": _openvino_facts(),
    }
    # results/fast_encoding.json is the first openvino-bf16 run (when bf16 was the fast path); every run now names
    # its backend.
    path = write_result(f"fast_encoding_{args.backend.replace('-', '_')}", result)
    print(
        f"\nfp32 {rates['fp32']:.1f} docs/s, {args.backend} {rates[args.backend]:.1f} docs/s: "
        f"{result['speedup']}x; cosine min {cosines.min():.6f}; nDCG@10 {quality or ''} "
        f"(end to end {result['ndcg@10_end_to_end']}); query p50 "
        f"{result['query_latency']['fp32']['p50_ms']} vs {result['query_latency'][args.backend]['p50_ms']} ms"
    )
    print(f"wrote {path}")


def _compiled_layout(encoder) -> dict:
    """Streams and threads OpenVINO compiled the document tower with (read back), or {} on torch."""
    forward = encoder.model[0].forward
    compiled = getattr(forward, "compiled", None)
    if compiled is None:
        return {}
    keys = (
        "NUM_STREAMS",
        "INFERENCE_NUM_THREADS",
        "OPTIMAL_NUMBER_OF_INFER_REQUESTS",
        "ENABLE_HYPER_THREADING",
        "ENABLE_CPU_PINNING",
        "INFERENCE_PRECISION_HINT",
    )
    return {
        hint: {key: str(getattr(compiled, hint).get_property(key)) for key in keys}
        for hint in ("latency", "throughput")
    }


def _openvino_facts() -> dict:
    from dual_encoder.acceleration import import_openvino

    ov = import_openvino()
    core = ov.Core()
    return {
        "version": ov.__version__,
        "cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
    }


if __name__ == "__main__":
    machine()  # fail early if the environment is incomplete
    main()
