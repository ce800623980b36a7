"""Train on SciFact train (809 queries) and score on SciFact test, starting from all-MiniLM-L6-v2.

    .venv/bin/python benchmarks/training.py --architecture siamese
    .venv/bin/python benchmarks/training.py --architecture light-query --query-layers 3

Every choice (epochs, learning rate, negatives, the margin, the budget) is made on the dev slice the trainer
holds out of train;
the test split is only read here, after training, to report. The test index is kept under
benchmarks/.work per document space, so the base model's index is reused as-is by a light-query model:
that is the point of it. Results go to benchmarks/results/training_<architecture>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import time
from pathlib import Path

from _common import RESULTS, SCIFACT, WORK, write_result

from dual_encoder.encoder import DualEncoder
from dual_encoder.evaluation import evaluate_embedded, load_beir
from dual_encoder.training import TrainingConfig, train

REFERENCE = {
    "untrained all-MiniLM-L6-v2": 0.645,
    "BM25": "0.665-0.679",
    "bge-small-en-v1.5": 0.713,
    "sentence-transformers MNRL b32 1 epoch lr 2e-5 (198 s)": 0.664,
    "sentence-transformers MNRL b32 4 epochs lr 5e-5 (737 s)": 0.739,
}


def evaluate_on_test(model: str) -> dict:
    encoder = DualEncoder(model)
    index = WORK / f"scifact-test-index-{encoder.fingerprint.document_space}"
    started = time.perf_counter()
    report = evaluate_embedded(SCIFACT, split="test", encoder=encoder, index_path=index, progress_bar=False)
    return {
        "metrics": report.metrics,
        "seconds": round(time.perf_counter() - started, 1),
        "document_space": encoder.fingerprint.document_space,
    }


def query_latency_ratio(base: str, light: str, rounds: int = 5, backend: str = "torch") -> dict:
    """Median per-query encoding time of both query towers, measured alternately on the test queries."""
    queries = list(load_beir(SCIFACT, split="test").queries.values())
    encoders = {
        "base": DualEncoder({"model": base, "backend": backend}),
        "light": DualEncoder({"model": light, "backend": backend}),
    }
    for encoder in encoders.values():
        encoder.encode_query("warm up")
    samples = {name: [] for name in encoders}
    for _ in range(rounds):
        for name, encoder in encoders.items():
            for query in queries:
                started = time.perf_counter()
                encoder.encode_query(query)
                samples[name].append((time.perf_counter() - started) * 1000)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "backend": backend,
        "base_p50_ms": round(medians["base"], 3),
        "light_p50_ms": round(medians["light"], 3),
        "speedup": round(medians["base"] / medians["light"], 2),
        "queries": len(queries),
        "rounds": rounds,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def query_latency_ratios(base: str, light: str) -> list[dict]:
    """The ratio on the default torch backend and on OpenVINO bf16, where per-operation overhead is smaller
    and the layer count shows more directly."""
    return [query_latency_ratio(base, light, backend=backend) for backend in ("torch", "openvino-bf16")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="siamese")
    parser.add_argument("--output", default=None, help="Model folder (default benchmarks/.work/model-<architecture>).")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=JSON",
        help="Any other TrainingConfig option, e.g. --set epochs=2 --set precision='\"bf16\"'.",
    )
    parser.add_argument("--query-layers", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true", help="Do not (re)score the untrained model.")
    parser.add_argument("--tag", default="", help="Suffix for the result file name.")
    parser.add_argument(
        "--remeasure-latency",
        action="store_true",
        help="light-query: only re-measure query encoding of the trained model (on a quiet machine) and "
        "update the result file.",
    )
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    output = WORK / f"model-{arguments.architecture}{arguments.tag}" if arguments.output is None else arguments.output
    if arguments.remeasure_latency:
        path = RESULTS / f"training_{arguments.architecture}{arguments.tag}.json"
        payload = json.loads(path.read_text())
        payload.pop("machine", None)
        payload["query_encoding"] = query_latency_ratios("all-MiniLM-L6-v2", str(output))
        write_result(f"training_{arguments.architecture}{arguments.tag}", payload)
        print(json.dumps(payload["query_encoding"], indent=2))
        return
    shutil.rmtree(output, ignore_errors=True)
    options = {key: json.loads(value) for key, value in (item.split("=", 1) for item in arguments.set)}
    config = TrainingConfig(
        data=SCIFACT,
        output=output,
        architecture=arguments.architecture,
        query_layers=arguments.query_layers,
        progress_bar=False,
        **options,
    )
    baseline = None if arguments.skip_baseline else evaluate_on_test("all-MiniLM-L6-v2")
    load_before = os.getloadavg()[0]
    result = train(config)
    load_after = os.getloadavg()[0]
    trained = evaluate_on_test(str(result.model_path))
    payload = {
        "architecture": arguments.architecture,
        "config": _without_machine_paths(config.to_dict()),
        "training_seconds": round(result.report["timings"]["training_seconds"], 1),
        "mining_seconds": round(result.report["timings"]["mining_seconds"], 1),
        "dev_evaluation_seconds": round(result.report["timings"]["evaluation_seconds"], 1),
        "total_seconds": round(result.report["timings"]["total_seconds"], 1),
        "steps": result.report["steps"],
        "status": result.status,
        "message": result.report["message"],
        "precision": result.report["precision"],
        "plan": result.report["plan"],
        "dev_corpus": result.report["dev_corpus"],
        "dev_before": result.report["dev_before"],
        "dev_after": result.report["dev_after"],
        "guard": result.report["guard"],
        "load_average_1min_before_after_training": [round(load_before, 2), round(load_after, 2)],
        "test_ndcg@10": round(trained["metrics"]["ndcg@10"], 4),
        "test_metrics": {k: round(v, 4) for k, v in trained["metrics"].items()},
        "test_baseline_ndcg@10": round(baseline["metrics"]["ndcg@10"], 4) if baseline else None,
        "document_index_still_valid": result.report["document_index_still_valid"],
        "references_ndcg@10": REFERENCE,
    }
    if arguments.architecture == "light-query":
        payload["query_encoding"] = query_latency_ratios("all-MiniLM-L6-v2", str(result.model_path))
    path = write_result(f"training_{arguments.architecture}{arguments.tag}", payload)
    print(json.dumps({k: v for k, v in payload.items() if k not in ("config", "references_ndcg@10")}, indent=2))
    print(f"written to {path}")


def _without_machine_paths(config: dict) -> dict:
    """Paths relative to the repository (results are committed and must not name this machine's folders)."""
    repository = Path(__file__).resolve().parents[1]
    relative = {}
    for key, value in config.items():
        if isinstance(value, str) and Path(value).is_absolute():
            value = os.path.relpath(value, repository)
        relative[key] = value
    return relative


if __name__ == "__main__":
    main()
