"""The static-query architecture on SciFact: quality against the document model's own index, query encoding and
text-to-top-10 latency side by side with the full (transformer) query tower, and the peak memory of a query-only
process with each tower.

    .venv/bin/python benchmarks/static_query.py                                  # over all-MiniLM-L6-v2
    .venv/bin/python benchmarks/static_query.py --document-model models/scifact-siamese   # over a fine-tuned model
    .venv/bin/python benchmarks/static_query.py --model PATH                     # measure a trained static model
    .venv/bin/python benchmarks/static_query.py --smoke                          # a few minutes: proves it runs

1. Training: ``TrainingConfig(architecture="static-query", base_model=<document model>)`` with its defaults on
   SciFact train (the defaults were chosen on the dev slice the trainer holds out of train; test is only read
   here, after training). The document model is all-MiniLM-L6-v2, or ``--document-model``: a Siamese model folder,
   such as the one ``dual-encoder train`` saves. Its document tower stays frozen, so its index stays valid.
2. Quality: SciFact test nDCG@10 of the static query tower over the document model's index (kept under
   benchmarks/.work per document space, shared with benchmarks/training.py), beside the document model's own
   nDCG@10 over the same index, and their ratio.
3. Latency, in one run, the two towers alternating per round over the test queries: query encoding
   (``DualEncoder.encode_query``) and text to top-10 Documents through ``DualEncoderRetriever`` +
   ``StoreEmbeddingRetriever`` over ``EmbeddedDocumentStore``; and, in the same rounds, two parts of the static
   tower's search: the store's search for an already encoded query, and the bare float32 product over the store's
   matrix (one BLAS thread, as the store runs it), so a slow run shows whether the code or the machine was slow.
4. Memory: a fresh process per tower and path loads the model and the index and answers the test queries; its peak
   RSS and whether it imported torch. Paths: ``core`` (``DualEncoder`` + the embedded store, no framework) and
   ``haystack`` (the retriever above; Haystack imports torch by itself when it is installed), plus, for the static
   tower, ``haystack_torch_blocked`` (``sys.modules["torch"] = None`` first, as the README suggests for a process
   that must stay torch-free).

``--smoke`` trains 2 epochs on a SciFact slice (40 training and 20 test queries over about 200 documents) and
measures every step on it once, to prove the script runs end to end; its figures mean nothing.

Results: benchmarks/results/static_query[_over-<model>][_smoke].json, with the machine and its load average.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, SCIFACT, WORK, summary, write_result

from dual_encoder.encoder import DualEncoder
from dual_encoder.evaluation import evaluate_embedded, load_beir

DEFAULT_DOCUMENT_MODEL = "all-MiniLM-L6-v2"
#: all-MiniLM-L6-v2's own SciFact test nDCG@10 through the same path (tests/test_scifact.py); used only when
#: ``--skip base-quality`` leaves its re-measurement out.
MINILM_NDCG = 0.6451
#: The smallest share of the document model's own nDCG@10 the static tower is to keep.
NDCG_SHARE_TARGET = 0.95
SMOKE_TRAIN_QUERIES = 40
SMOKE_TEST_QUERIES = 20
SMOKE_DISTRACTORS = 150
SMOKE_EPOCHS = 2

_QUERY_ONLY_CORE = """
import json, sys, time
from dual_encoder.embedded import open_embedded_store
from dual_encoder.encoder import DualEncoder
model, index, queries = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3], encoding="utf-8"))
started = time.perf_counter()
encoder = DualEncoder(model).load()
store = open_embedded_store(index)
store.check_encoder(encoder.fingerprint)
encoder.encode_query("warm up")
loaded = time.perf_counter() - started
for query in queries:
    store.vector_search(encoder.encode_query(query), top_k=10)
"""
_QUERY_ONLY_HAYSTACK = """
import json, sys, time
if sys.argv[4] == "block-torch":
    sys.modules["torch"] = None
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore
model, index, queries = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3], encoding="utf-8"))
started = time.perf_counter()
retriever = DualEncoderRetriever(
    retriever=StoreEmbeddingRetriever(document_store=EmbeddedDocumentStore(path=index)), encoder=model, top_k=10
)
retriever.warm_up()
retriever.run(query="warm up")
loaded = time.perf_counter() - started
for query in queries:
    retriever.run(query=query)
"""
_QUERY_ONLY_REPORT = """
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report the parent benchmark's peak.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({
    "peak_rss_mb": round(peak_kb / 1024, 1),
    "load_seconds": round(loaded, 2),
    "answer_seconds": round(time.perf_counter() - started - loaded, 2),
    "queries": len(queries),
    "imported_torch": sys.modules.get("torch") is not None,
    "imported_sentence_transformers": "sentence_transformers" in sys.modules,
}))
"""


def targets(document_model: str) -> dict:
    if document_model == DEFAULT_DOCUMENT_MODEL:
        quality = f">= 0.62 (96% of all-MiniLM-L6-v2's {MINILM_NDCG})"
    else:
        quality = f">= {NDCG_SHARE_TARGET:.0%} of the document model's own test nDCG@10 over its own index"
    return {
        "test_ndcg@10": quality,
        "training_seconds": "<= 900 on 2 cores",
        "query_encoding_p50_ms": "<= 0.2, and >= 20x faster than the full tower",
        "text_to_top10_p50_ms": "<= 1.5 on the SciFact embedded store",
        "query_only_peak_rss_mb": "<= 400",
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------------------ data
def smoke_data(folder: Path) -> Path:
    """A small BEIR folder cut from SciFact: the first training and test queries (by id), their positives, and
    the first distractors of the corpus. Written afresh each time (it is small)."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "qrels").mkdir(parents=True)
    kept_documents: set[str] = set()
    kept_queries: set[str] = set()
    for split, count in (("train", SMOKE_TRAIN_QUERIES), ("test", SMOKE_TEST_QUERIES)):
        lines = (SCIFACT / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        header, rows = lines[0], [line.split("\t") for line in lines[1:] if line.strip()]
        chosen = sorted({row[0] for row in rows}, key=lambda query: int(query) if query.isdigit() else query)[:count]
        kept = [row for row in rows if row[0] in chosen]
        kept_queries.update(chosen)
        kept_documents.update(row[1] for row in kept)
        (folder / "qrels" / f"{split}.tsv").write_text(
            "\n".join([header, *("\t".join(row) for row in kept)]) + "\n", encoding="utf-8"
        )
    corpus_lines = (SCIFACT / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    distractors = 0
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as corpus:
        for line in corpus_lines:
            document_id = str(json.loads(line)["_id"])
            if document_id in kept_documents or distractors < SMOKE_DISTRACTORS:
                distractors += document_id not in kept_documents
                corpus.write(line + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as queries:
        for line in (SCIFACT / "queries.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip() and str(json.loads(line)["_id"]) in kept_queries:
                queries.write(line + "\n")
    return folder


def index_path(data: Path, encoder: DualEncoder) -> Path:
    """The embedded index of ``data``'s test corpus for ``encoder``'s document space (shared by every model whose
    documents land in that space, and with benchmarks/training.py for SciFact)."""
    prefix = "scifact" if data == SCIFACT else data.name
    return WORK / f"{prefix}-test-index-{encoder.fingerprint.document_space}"


# ------------------------------------------------------------------------------------------------ steps
def train_model(data: Path, document_model: str, output: Path, *, smoke: bool) -> dict:
    from dual_encoder.training import TrainingConfig, train

    shutil.rmtree(output, ignore_errors=True)
    options = {"static_query_epochs": SMOKE_EPOCHS} if smoke else {}
    config = TrainingConfig(
        data=data,
        output=output,
        base_model=document_model,
        architecture="static-query",
        progress_bar=False,
        **options,
    )
    started = time.perf_counter()
    load_before = load_average()
    result = train(config, announce=print)
    report = result.report
    return {
        "config": {
            key: value
            for key, value in config.to_dict().items()
            if key.startswith("static_query")
            or key in ("base_model", "light_query_objective", "scale", "dev_fraction", "seed", "precision")
        },
        "precision": report["precision"],
        "status": report["status"],
        "message": report["message"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "timings_seconds": {key: round(value, 1) for key, value in report["timings"].items()},
        "load_average_1min_before_and_after": [load_before, load_average()],
        "dev_before_initialised_static": report["dev_before"],
        "dev_after": report["dev_after"],
        "dev_full_query_tower": report["dev_full_query_tower"],
        "query_encoding_reported_by_training": report["query_encoding"],
        "data": {key: value for key, value in report["data"].items() if key != "notes"},
    }


def quality(data: Path, document_model: str, model: str, *, with_base: bool) -> dict:
    """Test nDCG@10 (and the other metrics) of the document model and of the static tower over one index."""
    results: dict = {}
    towers = [("document_model", document_model)] if with_base else []
    for name, folder in [*towers, ("static_query", model)]:
        encoder = DualEncoder(folder)
        started = time.perf_counter()
        report = evaluate_embedded(
            data, split="test", encoder=encoder, index_path=index_path(data, encoder), progress_bar=False
        )
        results[name] = {
            "metrics": {key: round(value, 4) for key, value in report.metrics.items()},
            "seconds": round(time.perf_counter() - started, 1),
            "document_space": encoder.fingerprint.document_space,
            "queries": report.queries,
            "documents": report.documents,
        }
    if with_base:
        base_ndcg = results["document_model"]["metrics"]["ndcg@10"]
        results["same_index"] = results["static_query"]["document_space"] == results["document_model"]["document_space"]
    elif document_model == DEFAULT_DOCUMENT_MODEL and data == SCIFACT:
        base_ndcg = MINILM_NDCG
    else:
        raise SystemExit("--skip base-quality has a recorded figure only for all-MiniLM-L6-v2 on the whole SciFact.")
    static_ndcg = results["static_query"]["metrics"]["ndcg@10"]
    results["document_model_ndcg@10"] = base_ndcg
    results["static_query_ndcg@10"] = static_ndcg
    results["ndcg_ratio"] = round(static_ndcg / base_ndcg, 4) if base_ndcg else None
    results["ndcg_share_target"] = NDCG_SHARE_TARGET
    results["meets_ndcg_share_target"] = bool(base_ndcg) and static_ndcg / base_ndcg >= NDCG_SHARE_TARGET
    return results


def latency(document_model: str, model: str, index: Path, queries: list[str], rounds: int) -> dict:
    """Query encoding and text-to-top-10 of both towers, alternating per round in this process."""
    from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
    from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore

    from dual_encoder.embedded.store import _blas_threads_for

    store = EmbeddedDocumentStore(path=str(index))
    encoders = {"full_tower": DualEncoder(document_model), "static_query": DualEncoder(model)}
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
    encoding: dict[str, list[float]] = {name: [] for name in encoders}
    search: dict[str, list[float]] = {name: [] for name in encoders}
    # Where the static tower's text-to-top-10 goes, measured beside it: the store's search for a given vector,
    # and the bare float32 product that search cannot avoid (the store's own matrix, one BLAS thread, as the
    # store runs it). On a shared host the product's cost follows the neighbours' use of the memory system.
    static_vectors = [encoders["static_query"].encode_query(query) for query in queries]
    matrix = store.store._vectors.matrix[: store.count_documents()]  # the rows the store scans
    store_search: list[float] = []
    bare_product: list[float] = []
    load = [load_average()]
    for _ in range(rounds):
        for name in encoders:
            for query in queries:
                started = time.perf_counter()
                encoders[name].encode_query(query)
                encoding[name].append((time.perf_counter() - started) * 1000)
            for query in queries:
                started = time.perf_counter()
                found = retrievers[name].run(query=query)["documents"]
                search[name].append((time.perf_counter() - started) * 1000)
                if len(found) != min(10, store.count_documents()):
                    raise RuntimeError(f"{name} returned {len(found)} documents for {query!r}, not the top 10.")
        for vector in static_vectors:
            as_list = vector.tolist()
            started = time.perf_counter()
            store.embedding_retrieval(query_embedding=as_list, top_k=10)
            store_search.append((time.perf_counter() - started) * 1000)
            with _blas_threads_for(matrix.size):
                started = time.perf_counter()
                matrix @ vector
                bare_product.append((time.perf_counter() - started) * 1000)
        load.append(load_average())
    result = {
        "query_encoding": {name: summary(values) for name, values in encoding.items()},
        "text_to_top10": {name: summary(values) for name, values in search.items()},
        "static_query_parts": {
            "store_search_of_the_vector": summary(store_search),
            "bare_float32_product": summary(bare_product),
        },
        "rounds": rounds,
        "queries": len(queries),
        "documents_in_index": store.count_documents(),
        "load_average_1min_during": load,
    }
    for what in ("query_encoding", "text_to_top10"):
        full, static = result[what]["full_tower"]["p50_ms"], result[what]["static_query"]["p50_ms"]
        result[f"{what}_speedup_p50"] = round(full / static, 1) if static else None
    return result


def query_only_memory(document_model: str, model: str, index: Path, queries_file: Path) -> dict:
    """Peak RSS of a fresh process per tower and path (see the module docstring)."""
    runs = [
        ("core", "full_tower", document_model, _QUERY_ONLY_CORE, ""),
        ("core", "static_query", model, _QUERY_ONLY_CORE, ""),
        ("haystack", "full_tower", document_model, _QUERY_ONLY_HAYSTACK, "keep-torch"),
        ("haystack", "static_query", model, _QUERY_ONLY_HAYSTACK, "keep-torch"),
        ("haystack_torch_blocked", "static_query", model, _QUERY_ONLY_HAYSTACK, "block-torch"),
    ]
    results: dict = {}
    for path, tower, folder, script, torch_mode in runs:
        completed = subprocess.run(
            [sys.executable, "-c", script + _QUERY_ONLY_REPORT, folder, str(index), str(queries_file), torch_mode],
            capture_output=True,
            text=True,
            check=False,
            env=os.environ.copy(),
        )
        if completed.returncode != 0:
            raise RuntimeError(f"The {path} query-only process with the {tower} failed:\n{completed.stderr[-3000:]}")
        results.setdefault(path, {})[tower] = json.loads(completed.stdout.strip().splitlines()[-1])
    results["load_average_1min_after"] = load_average()
    return results


# ------------------------------------------------------------------------------------------------ main
def result_name(document_model: str, *, smoke: bool) -> str:
    name = "static_query"
    if document_model != DEFAULT_DOCUMENT_MODEL:
        name += "_over-" + re.sub(r"[^A-Za-z0-9.-]+", "-", Path(document_model).name).strip("-")
    return name + ("_smoke" if smoke else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--document-model",
        default=DEFAULT_DOCUMENT_MODEL,
        help="The model whose (frozen) document tower the static query tower is trained for, and whose own "
        "nDCG@10 and transformer query tower it is compared with: a Siamese model folder (such as the output of "
        "'dual-encoder train') or a known name (default: all-MiniLM-L6-v2).",
    )
    parser.add_argument(
        "--model", default=None, help="A trained static-query model folder to measure (skips training)."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Latency rounds over the test queries.")
    parser.add_argument("--skip", action="append", default=[], choices=["quality", "base-quality", "latency", "memory"])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"Train {SMOKE_EPOCHS} epochs on a SciFact slice and measure each step once on it: proves the script "
        "runs end to end in a few minutes (its figures mean nothing).",
    )
    arguments = parser.parse_args()
    if arguments.rounds < 1:
        parser.error("--rounds must be 1 or more.")
    document_model = arguments.document_model
    if document_model != DEFAULT_DOCUMENT_MODEL and not Path(document_model).is_dir():
        parser.error(f"--document-model {document_model!r} is not a model folder.")
    if not SCIFACT.is_dir():
        parser.error(f"SciFact is not at {SCIFACT} (BEIR layout expected).")

    WORK.mkdir(parents=True, exist_ok=True)
    data = smoke_data(WORK / "scifact-smoke") if arguments.smoke else SCIFACT
    rounds = 1 if arguments.smoke else arguments.rounds
    payload: dict = {
        "targets": targets(document_model),
        "smoke": arguments.smoke,
        "data": os.path.relpath(data, ROOT),
        "document_model": document_model,
        "load_average_1min_at_start": load_average(),
    }
    model = arguments.model
    if model is None:
        suffix = "" if document_model == DEFAULT_DOCUMENT_MODEL else "-over-" + Path(document_model).name
        output = WORK / f"model-static-query{suffix}{'-smoke' if arguments.smoke else ''}"
        payload["training"] = train_model(data, document_model, output, smoke=arguments.smoke)
        model = str(output)
    payload["model"] = os.path.relpath(model, ROOT)

    document_encoder, static_encoder = DualEncoder(document_model), DualEncoder(model)
    if static_encoder.fingerprint.document_space != document_encoder.fingerprint.document_space:
        raise SystemExit(
            f"{model} embeds documents into {static_encoder.fingerprint.document_space}, not into the document "
            f"model's space {document_encoder.fingerprint.document_space}: it was not trained over {document_model}. "
            f"Pass the --document-model it was trained over."
        )
    if "quality" not in arguments.skip:
        payload["quality"] = quality(data, document_model, model, with_base="base-quality" not in arguments.skip)
    index = index_path(data, document_encoder)
    if not index.is_dir() and {"latency", "memory"} - set(arguments.skip):
        # Latency and memory search the index the quality step builds; build it when that step was skipped.
        evaluate_embedded(data, split="test", encoder=document_encoder, index_path=index, progress_bar=False)
    queries = list(load_beir(data, split="test").queries.values())
    if "latency" not in arguments.skip:
        payload["latency"] = latency(document_model, model, index, queries, rounds)
    if "memory" not in arguments.skip:
        queries_file = WORK / f"{result_name(document_model, smoke=arguments.smoke)}-queries.json"
        queries_file.write_text(json.dumps(queries), encoding="utf-8")
        payload["query_only_process"] = query_only_memory(document_model, model, index, queries_file)
    payload["load_average_1min_at_end"] = load_average()
    path = write_result(result_name(document_model, smoke=arguments.smoke), payload)
    print(json.dumps(payload, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
