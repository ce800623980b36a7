"""The CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota.

Encoding (:mod:`dual_encoder.acceleration`) and the embedded store's scans (:mod:`dual_encoder.embedded`) size their
threads from it. A container limited to one CPU's worth of time, or a process pinned to one CPU, then runs one
thread where two would only take turns.

Example::

    from dual_encoder.cpus import usable_cpus

    threads = min(2, usable_cpus())
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

__all__ = ["affinity", "cgroup_cpu_quota", "usable_cpus"]


def affinity() -> list[int]:
    """The logical CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


@functools.cache
def cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the process's cgroup may use (cgroup v2 ``cpu.max``, v1 ``cfs_quota_us``), or ``None``
    for no limit. Read once per process: a cgroup's quota is set from outside and rarely changes under it."""
    candidates = [
        ("/sys/fs/cgroup/cpu.max", None),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    ]
    for quota_file, period_file in candidates:
        try:
            text = Path(quota_file).read_text().split()
            if period_file is not None:
                text.append(Path(period_file).read_text().strip())
        except OSError:
            continue
        if len(text) >= 2 and text[0] not in ("max", "-1"):
            return int(text[0]) / int(text[1])
        return None
    return None


def usable_cpus() -> int:
    """How many threads can run at once: the affinity mask's size, capped by the cgroup quota (rounded up)."""
    cpus = len(affinity())
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else max(1, cpus)
