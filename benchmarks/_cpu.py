"""What the encoding benchmarks record about the CPUs they ran on, so runs on two machines can be compared.

Everything that decides how fast OpenVINO and torch encode on a small virtual machine: how many logical CPUs
the process may use and which of them the topology presents as threads of one core (``lscpu``'s "Thread(s)
per core", ``/proc/cpuinfo``'s ``siblings`` / ``core id``), the caches, a memory-bandwidth probe, and the time
the hypervisor took away (steal) and the load average while the benchmark ran.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def cpu_topology() -> dict[str, Any]:
    """Logical CPUs, cores and sockets as the operating system presents them to this process."""
    cpus = sorted(os.sched_getaffinity(0))
    per_cpu = {}
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            per_cpu[cpu] = {
                "package": int((topology / "physical_package_id").read_text()),
                "core": int((topology / "core_id").read_text()),
                "thread_siblings": (topology / "thread_siblings_list").read_text().strip(),
            }
        except OSError:
            per_cpu[cpu] = {}
    cores = {(facts.get("package"), facts.get("core")) for facts in per_cpu.values()}
    cpuinfo: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "siblings", "cpu cores", "microcode") and key not in cpuinfo:
                cpuinfo[key] = value.strip()
            if key == "flags" and "flags" not in cpuinfo:
                flags = set(value.split())
                cpuinfo["flags"] = " ".join(
                    sorted(
                        flags
                        & {
                            "avx512f",
                            "avx512_bf16",
                            "avx512_vnni",
                            "amx_bf16",
                            "amx_int8",
                            "amx_tile",
                            "avx_vnni",
                            "hypervisor",
                        }
                    )
                )
    except OSError:
        pass
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            caches[f"L{level}{'d' if kind == 'Data' else 'i' if kind == 'Instruction' else ''}"] = {
                "size": (index / "size").read_text().strip(),
                "shared_with": (index / "shared_cpu_list").read_text().strip(),
            }
        except OSError:
            continue
    from dual_encoder.acceleration import cpu_layout

    return {
        "logical_cpus_in_affinity": len(cpus),
        "cpu_count": os.cpu_count(),
        "physical_cores_in_affinity": len(cores),
        "threads_per_core": round(len(cpus) / max(1, len(cores)), 2),
        "per_cpu": per_cpu,
        "cpuinfo": cpuinfo,
        "caches_of_cpu0": caches,
        "layout_chosen": cpu_layout().describe(),
    }


def memory_bandwidth_gb_s(megabytes: int = 256, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` single-thread copy and read bandwidth over a buffer far larger than the caches."""
    source = np.ones(megabytes * 2**20 // 8)
    target = np.empty_like(source)
    copies, reads = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(target, source)
        copies.append(time.perf_counter() - started)
        started = time.perf_counter()
        source.sum()
        reads.append(time.perf_counter() - started)
    size = source.nbytes / 1e9
    return {"copy_gb_s": round(2 * size / min(copies), 1), "read_gb_s": round(size / min(reads), 1)}


class StealMeter:
    """Share of CPU time the hypervisor gave to other guests (steal) and the busy share, between start and read."""

    def __init__(self) -> None:
        self._start = self._sample()
        self._load_start = os.getloadavg()[0]

    @staticmethod
    def _sample() -> list[int]:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            return [int(value) for value in fields]
        except (OSError, IndexError, ValueError):
            return []

    def read(self) -> dict[str, float]:
        end = self._sample()
        if not end or not self._start:
            return {}
        delta = [b - a for a, b in zip(self._start, end)]
        total = sum(delta[:8]) or 1
        idle = delta[3] + delta[4]
        return {
            "steal_percent": round(100 * delta[7] / total, 1),
            "busy_percent_all_processes": round(100 * (total - idle) / total, 1),
            "load_average_1min_start": round(self._load_start, 2),
            "load_average_1min_end": round(os.getloadavg()[0], 2),
        }
