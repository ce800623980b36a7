"""Helpers shared by the benchmark scripts: machine facts, timing, SciFact embeddings cached on disk."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
WORK = Path(__file__).resolve().parent / ".work"
RESULTS = Path(__file__).resolve().parent / "results"


_SIMD_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni"}


def machine() -> dict:
    import numpy
    import torch

    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if cpu != "unknown" and flags:
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        # The vector instructions the numbers depend on (the hosts here differ: AVX2-only or AVX-512 BF16).
        "simd": sorted(flags & _SIMD_FLAGS),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def timed(function, repeat: int) -> list[float]:
    """Wall-clock milliseconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "n": len(ordered),
    }


def scifact_documents_embedded():
    """SciFact test data and its corpus embedded by our document embedder; cached under benchmarks/.work."""
    from haystack import Document
    from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder

    from dual_encoder.evaluation import load_beir

    data = load_beir(SCIFACT, split="test")
    documents = [Document(id=d.id, content=d.text, meta={"title": d.title}) for d in data.corpus.values()]
    embedder = DualEncoderDocumentEmbedder(meta_fields_to_embed=["title"], embedding_separator=" ", progress_bar=True)
    embedder.warm_up()
    cache = WORK / f"scifact-{embedder.encoder.fingerprint.document_space}.json"
    if cache.exists():
        stored = json.loads(cache.read_text())
        from dataclasses import replace

        return data, [
            replace(doc, embedding=stored["embeddings"][doc.id], meta={**doc.meta, **stored["meta"][doc.id]})
            for doc in documents
        ]
    embedded = embedder.run(documents=documents)["documents"]
    WORK.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps(
            {
                "embeddings": {d.id: d.embedding for d in embedded},
                "meta": {d.id: {k: v for k, v in d.meta.items() if k != "title"} for d in embedded},
            }
        )
    )
    return data, embedded


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def unit_rows(rows: int, dimension: int, seed: int) -> np.ndarray:
    """Random unit rows made block by block in float32, so 1,000,000 x 384 never exists in float64 (another random
    stream than :func:`unit_vectors`, whose callers' committed results keep theirs)."""
    generator = np.random.default_rng(seed)
    matrix = np.empty((rows, dimension), dtype=np.float32)
    for start in range(0, rows, 65_536):
        block = generator.standard_normal((min(65_536, rows - start), dimension), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        matrix[start : start + len(block)] = block
    return matrix


def unit_vectors(count: int, dimension: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
