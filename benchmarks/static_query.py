"""The static-query architecture on SciFact: quality against the unchanged all-MiniLM-L6-v2 index, query
encoding and text-to-top-10 latency side by side with the full query tower, and the peak memory of a query-only
process with each tower.

    .venv/bin/python benchmarks/static_query.py                      # train with the defaults, then measure
    .venv/bin/python benchmarks/static_query.py --model PATH         # measure a trained static-query model

1. Training: ``TrainingConfig(architecture="static-query")`` with its defaults on SciFact train (the defaults were
   chosen on the dev slice the trainer holds out of train; test is only read here, after training).
2. Quality: SciFact test nDCG@10 of the static query tower over the index of the base model (kept under
   benchmarks/.work per document space and shared with benchmarks/training.py), beside the base model's own.
3. Latency, in one run, the two towers alternating per round over the 300 test queries: query encoding
   (``DualEncoder.encode_query``) and text to top-10 Documents through ``DualEncoderRetriever`` +
   ``StoreEmbeddingRetriever`` over ``EmbeddedDocumentStore``.
4. Memory: a fresh process per tower loads the model and the store and answers the 300 test queries through the
   Haystack retriever; its peak RSS, and whether it imported torch.

Results: benchmarks/results/static_query.json (with the machine and its load average).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import SCIFACT, WORK, summary, write_result

from dual_encoder.encoder import DualEncoder
from dual_encoder.evaluation import evaluate_embedded, load_beir

BASE = "all-MiniLM-L6-v2"
#: The base model's own SciFact test nDCG@10 through the same path (tests/test_scifact.py), used when
#: ``--skip base-quality`` leaves its re-measurement out.
BASE_NDCG = 0.6451
TARGETS = {
    "test_ndcg@10": ">= 0.62 (96% of the base model's 0.645)",
    "training_seconds": "<= 900 on 2 cores",
    "query_encoding_p50_ms": "<= 0.2, and >= 20x faster than the full tower",
    "text_to_top10_p50_ms": "<= 1.5 on the SciFact embedded store",
    "query_only_peak_rss_mb": "<= 400",
}

_QUERY_ONLY_PROCESS = """
import json, os, resource, sys, time
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore
model, index, queries = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
started = time.perf_counter()
retriever = DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=EmbeddedDocumentStore(path=index)),
                                 encoder=model, top_k=10)
retriever.warm_up()
loaded = time.perf_counter() - started
for query in queries:
    retriever.run(query=query)
print(json.dumps({
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "load_seconds": round(loaded, 2),
    "answer_seconds": round(time.perf_counter() - started - loaded, 2),
    "imported_torch": "torch" in sys.modules,
    "imported_sentence_transformers": "sentence_transformers" in sys.modules,
}))
"""


def train_model(output: Path) -> dict:
    import shutil

    from dual_encoder.training import TrainingConfig, train

    shutil.rmtree(output, ignore_errors=True)
    config = TrainingConfig(data=SCIFACT, output=output, architecture="static-query", progress_bar=False)
    result = train(config, announce=print)
    report = result.report
    return {
        "config": {
            k: v
            for k, v in config.to_dict().items()
            if k.startswith("static_query")
            or k in ("light_query_objective", "scale", "dev_fraction", "seed", "precision")
        },
        "precision": report["precision"],
        "status": report["status"],
        "timings_seconds": {k: round(v, 1) for k, v in report["timings"].items()},
        "dev_before_initialised_static": report["dev_before"],
        "dev_after": report["dev_after"],
        "dev_full_query_tower": report["dev_full_query_tower"],
        "query_encoding_reported_by_training": report["query_encoding"],
        "data": {k: v for k, v in report["data"].items() if k != "notes"},
    }


def quality(model: str, *, with_base: bool) -> dict:
    results: dict = {}
    encoders = [("base", DualEncoder(BASE))] if with_base else []
    for name, encoder in [*encoders, ("static_query", DualEncoder(model))]:
        index = WORK / f"scifact-test-index-{encoder.fingerprint.document_space}"
        started = time.perf_counter()
        report = evaluate_embedded(SCIFACT, split="test", encoder=encoder, index_path=index, progress_bar=False)
        results[name] = {
            "metrics": {k: round(v, 4) for k, v in report.metrics.items()},
            "seconds": round(time.perf_counter() - started, 1),
            "document_space": encoder.fingerprint.document_space,
        }
    base_space = DualEncoder(BASE).fingerprint.document_space
    results["same_index_as_base"] = results["static_query"]["document_space"] == base_space
    base_ndcg = results["base"]["metrics"]["ndcg@10"] if with_base else BASE_NDCG
    results["base_ndcg@10"] = base_ndcg
    results["ndcg_ratio"] = round(results["static_query"]["metrics"]["ndcg@10"] / base_ndcg, 4)
    return results


def latency(model: str, index: Path, queries: list[str], rounds: int) -> dict:
    from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
    from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore

    store = EmbeddedDocumentStore(path=str(index))
    encoders = {"full_tower": DualEncoder(BASE), "static_query": DualEncoder(model)}
    retrievers = {
        name: DualEncoderRetriever(
            retriever=StoreEmbeddingRetriever(document_store=store), encoder=encoder.config, top_k=10
        )
        for name, encoder in encoders.items()
    }
    for name in encoders:
        encoders[name].encode_query("warm up")
        retrievers[name].warm_up()
        retrievers[name].run(query="warm up")
    encoding = {name: [] for name in encoders}
    search = {name: [] for name in encoders}
    load = [os.getloadavg()[0]]
    for _ in range(rounds):
        for name in encoders:
            for query in queries:
                started = time.perf_counter()
                encoders[name].encode_query(query)
                encoding[name].append((time.perf_counter() - started) * 1000)
            for query in queries:
                started = time.perf_counter()
                retrievers[name].run(query=query)
                search[name].append((time.perf_counter() - started) * 1000)
        load.append(os.getloadavg()[0])
    result = {
        "query_encoding": {name: summary(values) for name, values in encoding.items()},
        "text_to_top10": {name: summary(values) for name, values in search.items()},
        "rounds": rounds,
        "queries": len(queries),
        "load_average_1min_during": [round(value, 2) for value in load],
    }
    result["query_encoding_speedup_p50"] = round(
        result["query_encoding"]["full_tower"]["p50_ms"] / result["query_encoding"]["static_query"]["p50_ms"], 1
    )
    result["text_to_top10_speedup_p50"] = round(
        result["text_to_top10"]["full_tower"]["p50_ms"] / result["text_to_top10"]["static_query"]["p50_ms"], 1
    )
    return result


def query_only_memory(model: str, index: Path, queries: list[str]) -> dict:
    results = {}
    for name, encoder in (("full_tower", BASE), ("static_query", model)):
        completed = subprocess.run(
            [sys.executable, "-c", _QUERY_ONLY_PROCESS, encoder, str(index), json.dumps(queries)],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ.copy(),
        )
        results[name] = json.loads(completed.stdout.strip().splitlines()[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="A trained static-query model folder (skips training).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", action="append", default=[], choices=["quality", "base-quality", "latency", "memory"])
    arguments = parser.parse_args()
    payload: dict = {"targets": TARGETS, "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    model = arguments.model
    if model is None:
        output = WORK / "model-static-query"
        payload["training"] = train_model(output)
        model = str(output)
    payload["model"] = os.path.relpath(model, Path(__file__).resolve().parents[1])
    if "quality" not in arguments.skip:
        payload["quality"] = quality(model, with_base="base-quality" not in arguments.skip)
    index = WORK / f"scifact-test-index-{DualEncoder(BASE).fingerprint.document_space}"
    queries = list(load_beir(SCIFACT, split="test").queries.values())
    if "latency" not in arguments.skip:
        payload["latency"] = latency(model, index, queries, arguments.rounds)
    if "memory" not in arguments.skip:
        payload["query_only_process"] = query_only_memory(model, index, queries)
    payload["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    path = write_result("static_query", payload)
    print(json.dumps(payload, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
