"""How many CPUs the agent may use: what sizes its workers and its fair shares."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may run on, or its cgroup's CPU limit (a pod's ``limits.cpu``, rounded
    up) when that is lower: ``os.cpu_count()`` counts the whole host, which in a pod limited to 2
    CPUs on a 64-core node would size everything 32 times too large."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        limit = math.ceil(int(quota) / int(period))
    except (OSError, ValueError):  # no cgroup v2 file, or "max": no limit
        return cpus
    return max(1, min(cpus, limit))
