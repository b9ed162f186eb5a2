"""Defaults the engine and the tasks share, in a module that imports nothing heavy, so that the
CLI can show them in ``--help`` without loading torch."""

from __future__ import annotations

import os

AUTO = "auto"  # a quantizer spec: sized to the number of items (semid.indexing.auto_spec)
DEFAULT_NUM_BEAMS = 20  # beams of a top-k search (at least k)
DEFAULT_K = 10  # answers per input of predict and serve (at most the catalogue's size)
MAX_INPUTS = 1024  # inputs of one serve request (--max-inputs): a worker is busy seconds, not hours
# serve: how long SIGINT/SIGTERM wait for open requests (--shutdown-timeout)
SHUTDOWN_TIMEOUT_S = 10.0
COLLISION_STRATEGIES = ("extra-level", "popularity", "reassign")  # semid.collisions implements each
INTERACTION_VECTORS = "interactions-svd"  # index metadata: item vectors from the interactions


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container or ``taskset`` may allow
    fewer than the machine has), else the machine's count; at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
