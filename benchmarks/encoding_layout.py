"""Which thread layout OpenVINO should encode on: streams, threads, SMT siblings and pinning, side by side.

The fast backends' speed-up over float32 torch differed between two machines with the same CPU model. This
compiles the same converted transformer under several CPU layouts and times ``encode_documents`` through
each, alternating (rotating who goes first) with the stock float32 path (sentence-transformers'
``encode_document``) in one process, on a fixed sample of SciFact documents embedded as BEIR does (title +
" " + text, 256 tokens). It records the layout OpenVINO actually compiled (read back from the compiled
model), the CPU topology, a memory-bandwidth probe, steal time and the load.

    .venv/bin/python benchmarks/encoding_layout.py --backend openvino-int8 --sample 300 --runs 3

To see how a machine whose vCPUs are presented as two threads of one core behaves, run it where the topology
files say so (in a private mount namespace: only that process tree sees them; see benchmarks/README.md):

    benchmarks/fake_smt_topology.sh .venv/bin/python benchmarks/encoding_layout.py --tag fake-smt
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import SCIFACT, machine, write_result
from _cpu import StealMeter, cpu_topology, memory_bandwidth_gb_s

READ_BACK = (
    "NUM_STREAMS",
    "INFERENCE_NUM_THREADS",
    "OPTIMAL_NUMBER_OF_INFER_REQUESTS",
    "ENABLE_HYPER_THREADING",
    "ENABLE_CPU_PINNING",
)


class FixedLayout:
    """A thread layout given as raw OpenVINO properties (duck-types :class:`dual_encoder.acceleration.CpuLayout`)."""

    def __init__(self, latency: dict[str, Any], throughput: dict[str, Any]) -> None:
        self.latency = latency
        self.throughput = throughput

    def openvino_properties(self, *, throughput: bool) -> dict[str, Any]:
        return dict(self.throughput if throughput else self.latency)


def candidate_layouts() -> dict[str, Any]:
    import torch

    from dual_encoder.acceleration import cpu_layout

    torch_threads = max(1, torch.get_num_threads())
    chosen = cpu_layout()
    logical = chosen.logical_cpus
    return {
        # What the fast backends did before the layout was chosen at run time: OpenVINO's hints decide streams
        # and which logical CPUs count, with torch's thread count as the cap.
        "openvino-hints": FixedLayout(
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch_threads},
            {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": torch_threads},
        ),
        "run-time-layout": chosen,
        "run-time-layout, unpinned": FixedLayout(
            {**chosen.openvino_properties(throughput=False), "ENABLE_CPU_PINNING": False},
            {**chosen.openvino_properties(throughput=True), "ENABLE_CPU_PINNING": False},
        ),
        "one-stream-all-logical": FixedLayout(
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": logical, "ENABLE_HYPER_THREADING": True},
            {
                "PERFORMANCE_HINT": "THROUGHPUT",
                "NUM_STREAMS": 1,
                "INFERENCE_NUM_THREADS": logical,
                "ENABLE_HYPER_THREADING": True,
            },
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="openvino-int8", help="the OpenVINO backend to lay out")
    parser.add_argument("--sample", type=int, default=300, help="SciFact documents per timed run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each path (alternating)")
    parser.add_argument("--layouts", default="", help="comma-separated subset of the layouts (default: all)")
    parser.add_argument("--tag", default="", help="suffix of the result file (e.g. fake-smt)")
    parser.add_argument("--compile-only", action="store_true", help="print how each layout compiles, time nothing")
    args = parser.parse_args()

    import numpy as np
    import torch

    from dual_encoder.acceleration import _CompiledTransformer, _OpenVINOForward, import_openvino
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.evaluation import load_beir

    meter = StealMeter()
    data = load_beir(SCIFACT, split="test")
    ids = sorted(random.Random(0).sample(list(data.corpus), args.sample))
    texts = [data.corpus[i].beir_text for i in ids]

    stock_encoder = DualEncoder({"model": "all-MiniLM-L6-v2", "backend": "torch"}).load()
    fast = DualEncoder({"model": "all-MiniLM-L6-v2", "backend": args.backend}).load()
    module = fast.model[0]
    original: _OpenVINOForward = module.forward
    core = import_openvino().Core()
    layouts = candidate_layouts()
    if args.layouts:
        layouts = {name: layouts[name] for name in args.layouts.split(",")}
    forwards: dict[str, _OpenVINOForward] = {}
    compiled_as: dict[str, dict[str, Any]] = {}
    for name, layout in layouts.items():
        compiled = _CompiledTransformer(core, original.compiled._ov_model, original.compiled._properties, layout)
        forwards[name] = _OpenVINOForward(
            compiled, original.input_names, original.output_name, backend=original.backend
        )
        compiled_as[name] = {
            hint: {key: str(getattr(compiled, hint).get_property(key)) for key in READ_BACK}
            for hint in ("latency", "throughput")
        }
        print(f"{name:>28}: {compiled_as[name]['throughput']}", flush=True)
    if args.compile_only:
        print(f"torch threads {torch.get_num_threads()}; layout {cpu_topology()['layout_chosen']}")
        return

    stock = stock_encoder.model

    def encode_with(name: str) -> Any:
        def run(batch: list[str]) -> np.ndarray:
            module.forward = forwards[name]
            return fast.encode_documents(batch)

        return run

    paths = {"stock-fp32": lambda batch: stock.encode_document(batch, batch_size=32, convert_to_numpy=True)}
    paths.update({name: encode_with(name) for name in forwards})
    for encode in paths.values():
        encode(texts[:64])
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for run in range(args.runs):
        order = names[run % len(names) :] + names[: run % len(names)]
        for name in order:
            started = time.perf_counter()
            paths[name](texts)
            seconds[name].append(time.perf_counter() - started)
            print(f"run {run + 1}/{args.runs} {name:>28}: {len(texts) / seconds[name][-1]:6.1f} docs/s", flush=True)
    module.forward = original
    rates = {name: len(texts) / statistics.median(samples) for name, samples in seconds.items()}
    result = {
        "what": f"all-MiniLM-L6-v2 with backend={args.backend!r}: the same converted transformer compiled under "
        "several CPU layouts, encode_documents through each, alternating with the stock float32 path "
        "(sentence-transformers encode_document, batch 32) in one process; medians",
        "backend": args.backend,
        "documents": len(texts),
        "runs": args.runs,
        "torch_threads": torch.get_num_threads(),
        "docs_per_second": {name: round(rate, 1) for name, rate in rates.items()},
        "docs_per_second_runs": {
            name: [round(len(texts) / s, 1) for s in samples] for name, samples in seconds.items()
        },
        "speedup_over_stock": {name: round(rate / rates["stock-fp32"], 2) for name, rate in rates.items()},
        "compiled_as": compiled_as,
        "cpu": cpu_topology(),
        "memory_bandwidth": memory_bandwidth_gb_s(),
        "during_run": meter.read(),
        "openvino": import_openvino().__version__,
    }
    name = f"encoding_layout_{args.backend.replace('-', '_')}" + (f"_{args.tag}" if args.tag else "")
    path = write_result(name, result)
    for layout, rate in rates.items():
        print(f"{layout:>28}: {rate:6.1f} docs/s  {result['speedup_over_stock'][layout]:.2f}x stock")
    print(f"during the run: {result['during_run']}; wrote {path}")


if __name__ == "__main__":
    machine()
    main()
