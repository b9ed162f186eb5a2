"""Learning-rate schedule: linear warm-up, then constant, linear or cosine decay."""

from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate for the update that follows `step` finished updates.

    Warm-up climbs linearly from 1/warmup_steps to 1 (not from 0: a zero first step wastes a batch);
    decay schedules then fall to 0 right after the last of `total_steps` updates.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - done
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}; choose constant, linear or cosine")
