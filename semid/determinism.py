"""Bit-for-bit repeatable training on the CPU, and TorchScript that computes alike on every call.

With several CPU threads, torch adds up the gradients of an indexed tensor (``x[rows]``,
``codebooks[levels, codes]``) in an order that varies from run to run, so the same seed and data gave
weights that differed in the seventh decimal (and IDs or metrics that could drift apart over a long
run). Torch's deterministic algorithms add them in a fixed order. GPUs keep their default: their
deterministic kernels need ``CUBLAS_WORKSPACE_CONFIG`` set before start-up and cost speed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def plain_torchscript() -> Iterator[None]:
    """Within (or around a decorated function): TorchScript functions, such as geoopt's manifold
    math, run as written. The optimizing executor profiles their first calls and then runs fused
    versions, which round differently, so a process's first hrq fit differed from its later ones
    in the last bits of every weight."""
    with torch.jit.optimized_execution(False):
        yield


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Within: torch's CPU generator seeded with ``seed``; after, the caller's random state as it
    was. Other devices' generators are neither seeded nor forked (``torch.manual_seed`` reseeds
    every GPU's, and forking them warns on a machine with several GPUs): for CPU work only."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


@contextmanager
def repeatable(device: torch.device | str = "cpu") -> Iterator[None]:
    """Within: torch's deterministic algorithms on when ``device`` is the CPU, and TorchScript
    unoptimized (`plain_torchscript`); as before after."""
    with plain_torchscript():
        if torch.device(device).type != "cpu":
            yield
            return
        enabled = torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
